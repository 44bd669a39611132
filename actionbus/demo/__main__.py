"""``python -m actionbus.demo``: run the end-to-end demo; exit code 0 if all went as expected."""

from actionbus.demo.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
