// A trace-worker client in Node (ioredis), written from docs/PROTOCOL.md alone.
//
//   node client.mjs vectors <job_id_vectors.json>
//   node client.mjs request <redis-url> <prefix> <request-json> <out-file> [--cancel] [--drop-after-chunks N]
//                                                                        [--file-root DIR]
//   node client.mjs cancel <redis-url> <prefix> <job-id> [<request-id>] [--until-ended]
//
// `request` follows PROTOCOL.md §2: derive the job id (§1 "Job ids"), note the stream's newest id,
// XADD the request, read the job stream from there, keep chunks of the current attempt, stop at the
// terminal status that carries our request id, re-read the answered attempt's chunks from
// `start_id` when needed (or, when the answer has no chunks or they are gone, fetch `url`; a
// file:// `uri` only under --file-root), verify size and sha256, write the file. It prints one
// JSON object.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import Redis from "ioredis";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "dead"]);

// ---- PROTOCOL.md §1 "Job ids"
const TIME = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$/;

export function epochNs(text) {
  const m = TIME.exec(text);
  if (!m) throw new Error(`not an RFC 3339 time: ${text}`);
  const [, y, mo, d, h, mi, s, frac = "", off] = m;
  let ms = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
  if (off !== "Z" && off !== "z") {
    const sign = off[0] === "-" ? -1 : 1;
    const digits = off.slice(1, 3) + off.slice(4, 6);
    ms -= sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4))) * 60000;
  }
  const micros = BigInt((frac + "000000").slice(0, 6)); // digits after the sixth are dropped
  return BigInt(ms) * 1000000n + micros * 1000n;
}

export function canonical(req) {
  const num = (t) => (t === undefined || t === null ? "null" : epochNs(t).toString());
  const chunks = req.chunks === undefined ? true : req.chunks;
  return (
    `{"begin": ${num(req.begin)}, "chunks": ${chunks ? "true" : "false"}, ` +
    (req.compress !== undefined && req.compress !== null ? `"compress": "${req.compress}", ` : "") +
    `"end": ${num(req.end)}, ` +
    (req.logs === true ? `"logs": true, ` : "") +
    (req.metrics === true ? `"metrics": true, ` : "") +
    `"process_id": "${req.process_id.toLowerCase()}", "span_types": "${req.span_types ?? "both"}"}`
  );
}

export function jobId(req) {
  if (req.job_id !== undefined) return req.job_id;
  return "t-" + createHash("sha256").update(canonical(req), "utf8").digest("hex").slice(0, 32);
}

// ---- entries: ioredis returns [id, [field, value, ...]] with Buffers
function toMap(flat) {
  const out = {};
  for (let i = 0; i < flat.length; i += 2) {
    const key = flat[i].toString();
    out[key] = key === "data" ? flat[i + 1] : flat[i + 1].toString();
  }
  return out;
}

function connect(url) {
  // No automatic resend: after a dropped connection we resume ourselves from the last id (§2.3).
  return new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 0, autoResendUnfulfilledCommands: false,
    enableOfflineQueue: true, retryStrategy: () => null });
}

async function request(url, prefix, rawJson, outFile, opts) {
  const req = JSON.parse(rawJson);
  const job = jobId(req);
  const stream = `${prefix}:job:{${job}}`;
  const cmd = connect(url);
  let reader = connect(url);
  const seen = [];
  const report = { job_id: job, statuses: [], reconnects: 0 };
  try {
    const newest = await cmd.xrevrangeBuffer(stream, "+", "-", "COUNT", 1);
    let last = newest.length ? newest[0][0].toString() : "0-0";
    const requestId = await cmd.xadd(`${prefix}:requests`, "*", "request", rawJson);
    report.request_id = requestId;
    let attempt = null; // §2 step 4: the attempt being collected; none until a `running` is seen
    let collecting = false;
    let chunks = [];
    let nextSeq = 0;
    let bytes = 0;
    let chunksSeen = 0;
    let answer = null;
    let cancelSent = false;
    while (!answer) {
      let reply;
      try {
        reply = await reader.xreadBuffer("COUNT", 100, "BLOCK", 5000, "STREAMS", stream, last);
      } catch (err) {
        // §2.3: after a dropped connection, XREAD again from the last id processed.
        reader.disconnect();
        reader = connect(url);
        report.reconnects += 1;
        continue;
      }
      if (!reply) {
        if (!report.statuses.some((s) => s.request_id === requestId)) {
          const groups = await cmd.call("XINFO", "GROUPS", `${prefix}:requests`).catch(() => []);
          report.no_pickup_groups = groups.length;
        }
        continue;
      }
      for (const [rawId, flat] of reply[0][1]) {
        last = rawId.toString();
        const e = toMap(flat);
        seen.push(e.type);
        if (e.type === "status") {
          report.statuses.push({ state: e.state, request_id: e.request_id ?? null, attempt: Number(e.attempt), detail: e.detail ?? null });
          if (e.state === "running" && (attempt === null || Number(e.attempt) > attempt)) {
            attempt = Number(e.attempt); chunks = []; nextSeq = 0; bytes = 0; collecting = true;
          }
          if (e.request_id === requestId && opts.cancel && !cancelSent && (e.state === "running" || e.state === "queued")) {
            cancelSent = true;
            report.cancel_id = await cmd.xadd(`${prefix}:cancels`, "*", "job_id", job, "request_id", requestId);
          }
          if (e.request_id === requestId && TERMINAL.has(e.state)) { answer = e; break; }
        } else if (e.type === "chunk" && collecting && Number(e.attempt) === attempt) {
          if (Number(e.seq) !== nextSeq || Number(e.offset) !== bytes) {
            // joined after the attempt's first chunks: step 5 reads them from start_id
            collecting = false; chunks = []; report.joined_mid_stream = { seq: Number(e.seq) };
            continue;
          }
          chunks.push(e.data); nextSeq += 1; bytes += e.data.length; chunksSeen += 1;
          if (e.last === "true") chunks.complete = true;
          if (opts.dropAfterChunks && chunksSeen === opts.dropAfterChunks) {
            // a real connection drop: kill our reader's connection from the other one
            const id = await reader.client("ID");
            await cmd.client("KILL", "ID", id);
          }
        } else if (e.type === "cancel" && e.cancel_id === report.cancel_id) {
          report.cancel_outcome = e.outcome;
        }
      }
    }
    // §5: the cancel's own answer (a `cancel` entry with our cancel_id) follows on the job stream
    while (report.cancel_id && !report.cancel_outcome) {
      const reply = await reader.xreadBuffer("COUNT", 100, "BLOCK", 5000, "STREAMS", stream, last);
      for (const [rawId, flat] of reply ? reply[0][1] : []) {
        last = rawId.toString();
        const e = toMap(flat);
        if (e.type === "cancel" && e.cancel_id === report.cancel_id) report.cancel_outcome = e.outcome;
      }
    }
    report.state = answer.state;
    report.attempt = Number(answer.attempt);
    report.error_code = answer.error_code ?? null;
    report.labels = JSON.parse(answer.labels ?? "{}");
    report.detail = answer.detail ?? null;
    report.start_id = answer.start_id ?? null;
    report.chunks = answer.chunks ?? null;
    if (answer.state !== "succeeded") return report;
    // §4: refuse unverifiable results
    if (answer.size === undefined || answer.sha256 === undefined) throw new Error("succeeded without size/sha256");
    if (!(collecting && chunks.complete && attempt === Number(answer.attempt))) {
      chunks = await rereadChunks(cmd, stream, answer, report);
      if (chunks === null) chunks = [await fetchBlob(answer, opts.fileRoot, report)];
    }
    const data = Buffer.concat(chunks);
    const sha = createHash("sha256").update(data).digest("hex");
    if (data.length !== Number(answer.size) || sha !== answer.sha256) throw new Error(`verification failed: ${data.length} ${sha}`);
    writeFileSync(outFile, data);
    report.size = data.length;
    report.sha256 = sha;
    report.verified = true;
    return report;
  } finally {
    cmd.disconnect();
    reader.disconnect();
  }
}

// §2 step 5: the answered attempt's chunks from `start_id` (the attempt's `running` entry) on, in
// pages of 8; null when the answer names none (`chunks` 0 or no `start_id`) or they are gone (the
// job stream expired): then the blob is the way (§4).
async function rereadChunks(cmd, stream, answer, report) {
  if (!answer.start_id || Number(answer.chunks ?? 0) === 0) return null;
  const chunks = [];
  let nextSeq = 0, bytes = 0, from = answer.start_id;
  report.reread_from = answer.start_id;
  for (;;) {
    const page = await cmd.xrangeBuffer(stream, from, "+", "COUNT", 8);
    if (!page.length) return null; // chunks missing after start_id: expired
    for (const [rawId, flat] of page) {
      if (from === answer.start_id && rawId.toString() !== answer.start_id) return null; // its running entry is gone
      from = "(" + rawId.toString();
      const e = toMap(flat);
      if (e.type !== "chunk" || Number(e.attempt) !== Number(answer.attempt)) continue;
      if (Number(e.seq) !== nextSeq || Number(e.offset) !== bytes) throw new Error("chunk order");
      chunks.push(e.data); nextSeq += 1; bytes += e.data.length;
      if (e.last === "true") return chunks;
    }
  }
}

// §4: the object from `url` (http(s)), or a file:// `url`/`uri` only under a blob folder we know.
async function fetchBlob(answer, fileRoot, report) {
  if (answer.url && !answer.url.startsWith("file://")) {
    report.fetched = "url";
    const res = await fetch(answer.url);
    if (!res.ok) throw new Error(`GET url: HTTP ${res.status}`);
    return Buffer.from(await res.arrayBuffer());
  }
  const file = [answer.url, answer.uri].find((u) => u?.startsWith("file://"));
  if (file && fileRoot) {
    const path = fileURLToPath(file);
    if (!path.startsWith(resolve(fileRoot) + sep)) throw new Error(`file uri outside the blob folder: ${path}`);
    report.fetched = "file";
    return readFileSync(path);
  }
  throw new Error(`no chunks and no fetchable url (object at ${answer.uri})`);
}

// ---- PROTOCOL.md §5: XADD a cancel entry, read its answer (a `cancel` entry with our cancel_id) on
// the job stream from the stream's newest id; with --until-ended, go on to the job's own terminal
// status (one without request_id), noting the answers to requests on the way.
async function cancel(url, prefix, job, requestId, opts) {
  const stream = `${prefix}:job:{${job}}`;
  const cmd = connect(url);
  try {
    const newest = await cmd.xrevrangeBuffer(stream, "+", "-", "COUNT", 1);
    let last = newest.length ? newest[0][0].toString() : "0-0";
    const fields = ["job_id", job, ...(requestId ? ["request_id", requestId] : [])];
    const report = { cancel_id: await cmd.xadd(`${prefix}:cancels`, "*", ...fields), answered: [] };
    for (;;) {
      const reply = await cmd.xreadBuffer("COUNT", 100, "BLOCK", 5000, "STREAMS", stream, last);
      for (const [rawId, flat] of reply ? reply[0][1] : []) {
        last = rawId.toString();
        const e = toMap(flat);
        if (e.type === "cancel" && e.cancel_id === report.cancel_id) {
          report.outcome = e.outcome;
          report.detail = e.detail ?? null;
          report.request_id = e.request_id ?? null;
          report.ttl = await cmd.ttl(stream); // the answer's stream expires (a short TTL when nothing changed)
        } else if (report.outcome && e.type === "status" && e.request_id !== undefined) {
          report.answered.push({ request_id: e.request_id, state: e.state });
        } else if (report.outcome && e.type === "status" && TERMINAL.has(e.state)) {
          report.job_state = e.state;
          report.job_attempt = Number(e.attempt);
        }
      }
      if (report.outcome && (!opts.untilEnded || report.job_state)) return report;
    }
  } finally {
    cmd.disconnect();
  }
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === "vectors") {
    const { vectors } = JSON.parse(readFileSync(args[0], "utf8"));
    let ok = 0;
    for (const v of vectors) {
      const req = JSON.parse(v.request);
      const c = canonical(req);
      if (c !== v.canonical || jobId(req) !== v.job_id) {
        console.log(JSON.stringify({ ok: false, note: v.note, canonical: c, expected: v.canonical }));
        process.exit(1);
      }
      ok += 1;
    }
    const { rejected_times: rejected = [] } = JSON.parse(readFileSync(args[0], "utf8"));
    for (const t of rejected) {
      let refused = false;
      try { epochNs(t); } catch { refused = true; }
      if (!refused) { console.log(JSON.stringify({ ok: false, accepted: t })); process.exit(1); }
    }
    console.log(JSON.stringify({ ok: true, vectors: ok, rejected: rejected.length }));
    return;
  }
  if (cmd === "request") {
    const [url, prefix, raw, out, ...rest] = args;
    const opts = { cancel: rest.includes("--cancel") };
    const i = rest.indexOf("--drop-after-chunks");
    if (i >= 0) opts.dropAfterChunks = Number(rest[i + 1]);
    const r = rest.indexOf("--file-root");
    if (r >= 0) opts.fileRoot = rest[r + 1];
    console.log(JSON.stringify(await request(url, prefix, raw, out, opts)));
    return;
  }
  if (cmd === "cancel") {
    const flags = args.filter((a) => a.startsWith("--"));
    const [url, prefix, job, requestId] = args.filter((a) => !a.startsWith("--"));
    console.log(JSON.stringify(await cancel(url, prefix, job, requestId, { untilEnded: flags.includes("--until-ended") })));
    return;
  }
  console.error(
    "usage: client.mjs vectors FILE | request URL PREFIX JSON OUT [--cancel] [--drop-after-chunks N] [--file-root DIR]" +
      " | cancel URL PREFIX JOB_ID [REQUEST_ID] [--until-ended]",
  );
  process.exit(2);
}

main().catch((err) => { console.error(err.stack || String(err)); process.exit(1); });
