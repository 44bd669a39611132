"""A small web dashboard (``pip install 'actionbus[dashboard]'``; ``actionbus dashboard``)."""
