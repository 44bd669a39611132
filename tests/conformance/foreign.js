// A foreign (Node.js) service speaking the actionbus wire format from docs/wire-format.md.
// Driven by test_node_conformance.py: `node foreign.js COMMAND` with a JSON config on stdin,
// one JSON result on stdout. Every key name comes from the config (derived from actionbus's
// QueueManager); nothing here knows the key layout. Every message received is validated
// against the committed JSON Schemas.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const Redis = require("ioredis");
const Ajv2020 = require("ajv/dist/2020");

const SCHEMAS = path.join(__dirname, "..", "..", "schemas");

function loadValidators() {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  const validators = {};
  for (const file of fs.readdirSync(SCHEMAS)) {
    if (!file.endsWith(".schema.json")) continue;
    const schema = JSON.parse(fs.readFileSync(path.join(SCHEMAS, file), "utf8"));
    validators[file.replace(".schema.json", "")] = ajv.compile(schema);
  }
  return validators;
}

const validators = loadValidators();

function check(kind, message) {
  const validate = validators[kind];
  if (!validate) throw new Error(`no schema ${kind}`);
  const ok = validate(message);
  return { kind, valid: ok, errors: ok ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message}`) };
}

// The timestamp form writers emit: RFC 3339 UTC, microseconds, Z.
function now() {
  return new Date().toISOString().replace("Z", "000Z");
}

function uuid() {
  return crypto.randomUUID();
}

function fieldsToObject(fields) {
  const out = {};
  for (let i = 0; i < fields.length; i += 2) out[fields[i]] = fields[i + 1];
  return out;
}

// A strict writer: every documented field of a DomainAction, null where empty.
function action(overrides) {
  return {
    action_id: uuid(), action_type: null, timestamp: now(),
    tenant_id: null, session_id: null, task_id: null, user_id: null,
    origin_service: null, target_service: null, correlation_id: null, trace_id: null,
    callback_queue_name: null, callback_action_type: null, expires_at: null, ordering_key: null,
    data: {}, metadata: {}, ...overrides,
  };
}

function reply(request, overrides) {
  return {
    action_id: uuid(),
    correlation_id: request.correlation_id || request.action_id,
    trace_id: request.trace_id ?? null,
    action_type_response_to: request.action_type,
    success: true, timestamp: now(), data: {}, error: null, ...overrides,
  };
}

const commands = {
  // Validate an AsyncAPI document against the official AsyncAPI 3.0.0 JSON Schema.
  async asyncapi(redis, cfg) {
    const Ajv = require("ajv");
    const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
    const validate = ajv.compile(require("@asyncapi/specs/schemas/3.0.0-without-$id.json"));
    return { checks: cfg.documents.map((doc) => {
      const ok = validate(doc);
      return { kind: "asyncapi-3.0.0", valid: ok,
        errors: ok ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message}`) };
    }) };
  },

  // Validate given messages: [{kind, message}] -> their checks.
  async validate(redis, cfg) {
    return { checks: cfg.messages.map((m) => check(m.kind, m.message)) };
  },

  // XADD raw entries: [{stream, fields: {name: value}}]; returns their entry ids.
  async xadd(redis, cfg) {
    const ids = [];
    for (const entry of cfg.entries) {
      const args = [];
      for (const [k, v] of Object.entries(entry.fields)) args.push(k, v);
      ids.push(await redis.xadd(entry.stream, "*", ...args));
    }
    return { ids };
  },

  // Ordered sends: for n < cfg.per_key, for each key, XADD action n of the key to the
  // ordered stream of partition crc32(key) % N (cfg.streams: the N ordered streams).
  async ordered(redis, cfg) {
    const zlib = require("zlib");
    const partitions = {};
    for (let n = 0; n < cfg.per_key; n++) {
      for (const key of cfg.keys) {
        const k = zlib.crc32(Buffer.from(key, "utf8")) % cfg.streams.length;
        partitions[key] = k;
        const sent = action({ action_type: cfg.action_type, ordering_key: key,
                              data: { key, n } });
        await redis.xadd(cfg.streams[k], "*", "data", JSON.stringify(sent));
      }
    }
    return { partitions };
  },

  // Send one action (a full one built here, merged with cfg.action) and, with cfg.reply_queue,
  // wait for the reply on that list.
  async call(redis, cfg) {
    const sent = action(cfg.action);
    if (cfg.raw_action_id) sent.action_id = cfg.raw_action_id;
    if (cfg.reply_queue) sent.callback_queue_name = cfg.reply_queue;
    const id = await redis.xadd(cfg.stream, "*", "data", JSON.stringify(sent));
    const result = { sent, id };
    if (cfg.reply_queue) {
      const popped = await redis.brpop(cfg.reply_queue, cfg.timeout || 10);
      if (!popped) return { ...result, reply: null };
      result.raw_reply = popped[1];
      result.reply = JSON.parse(popped[1]);
      result.check = check("domain-action-response", result.reply);
    }
    return result;
  },

  // Read entries appended to a stream after cfg.after ("0" = all), validate each as cfg.kind.
  async read(redis, cfg) {
    const deadline = Date.now() + (cfg.timeout || 10) * 1000;
    const found = [];
    let last = cfg.after || "0";
    while (found.length < cfg.count && Date.now() < deadline) {
      const res = await redis.xread("COUNT", 100, "BLOCK", 200, "STREAMS", cfg.stream, last);
      for (const [, entries] of res || []) {
        for (const [id, fields] of entries) {
          last = id;
          const obj = fieldsToObject(fields);
          const message = cfg.kind === "dead-letter" ? obj : JSON.parse(obj.data);
          found.push({ id, message, check: check(cfg.kind, message) });
        }
      }
    }
    return { entries: found };
  },

  // Serve cfg.count requests from a stream through a consumer group, as a service would:
  // validate each, answer pseudo-sync requests (LPUSH + EXPIRE) and callback requests
  // (XADD to callback_queue_name), then XACK.
  async serve(redis, cfg) {
    try {
      await redis.xgroup("CREATE", cfg.stream, cfg.group, "0", "MKSTREAM");
    } catch (err) {
      if (!String(err.message).startsWith("BUSYGROUP")) throw err;
    }
    const deadline = Date.now() + (cfg.timeout || 10) * 1000;
    const served = [];
    while (served.length < cfg.count && Date.now() < deadline) {
      const res = await redis.xreadgroup("GROUP", cfg.group, "node-1", "COUNT", 10, "BLOCK", 200,
        "STREAMS", cfg.stream, ">");
      for (const [, entries] of res || []) {
        for (const [id, fields] of entries) {
          const request = JSON.parse(fieldsToObject(fields).data);
          const record = { id, request, check: check("domain-action", request) };
          const answer = cfg.answers[request.action_type] || {};
          if (request.callback_action_type) {
            const callback = action({
              action_type: request.callback_action_type,
              origin_service: cfg.service,
              target_service: request.origin_service,
              correlation_id: request.correlation_id || request.action_id,
              trace_id: request.trace_id ?? null,
              data: answer.data || {},
              metadata: {
                response_to: request.action_type,
                response_to_action_id: request.action_id,
                success: answer.error ? false : true,
                callback_context: request.metadata.callback_context ?? null,
                error: answer.error || null,
              },
            });
            record.callback = callback;
            record.callback_check = check("callback", callback);
            await redis.xadd(request.callback_queue_name, "*", "data", JSON.stringify(callback));
          } else if (request.callback_queue_name) {
            const body = answer.raw !== undefined
              ? answer.raw.replace("$CORRELATION_ID", request.correlation_id)
              : JSON.stringify(reply(request, answer.reply || {}));
            await redis.lpush(request.callback_queue_name, body);
            await redis.expire(request.callback_queue_name, 60);
          }
          await redis.xack(cfg.stream, cfg.group, id);
          served.push(record);
        }
      }
    }
    return { served };
  },
};

async function main() {
  const command = commands[process.argv[2]];
  if (!command) throw new Error(`unknown command ${process.argv[2]}`);
  const cfg = JSON.parse(fs.readFileSync(0, "utf8"));
  const redis = new Redis(cfg.redis_url, { maxRetriesPerRequest: 2, lazyConnect: true });
  await redis.connect();
  try {
    process.stdout.write(JSON.stringify(await command(redis, cfg)));
  } finally {
    redis.disconnect();
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
