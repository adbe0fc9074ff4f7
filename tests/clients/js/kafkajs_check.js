#!/usr/bin/env node
// kafkajs client check (tests/clients/README.md, "kafkajs").
//
// Creates the topic with the kafkajs admin client, produces N deterministic
// records (keys, headers, explicit timestamps and partitions, optional gzip) with
// acks=-1 and the idempotent producer, checks the acked offsets, then checks the
// end offsets (admin.fetchTopicOffsets) and timestamp lookups
// (admin.fetchTopicOffsetsByTimestamp). It does NOT consume: kafkajs consumers
// always join a consumer group. With --dump FILE it writes every produced record
// (and its acked offset) as JSON, so another client can read the data back and
// verify it (tests/test_kafkajs.py does that with confluent-kafka).
//
// Prints one JSON summary line on stdout; logs go to stderr. Exit 0 only if every
// check passed.
//
//   node kafkajs_check.js --bootstrap H:P[,H:P...] --topic T --messages N
//        [--partitions P] [--compression none|gzip] [--seed S] [--dump FILE]
//        [--batch B] [--no-idempotent] [--expect-offset-skew K]
//        [--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL]
//        [--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P]
//        [--ssl-ca FILE] [--ssl-cert FILE --ssl-key FILE]
//
// The security flags are those of the other client checks (../README.md): kafkajs'
// `ssl: {ca, cert, key}` (Node's TLS, which checks the broker's certificate against its
// host name) and `sasl: {mechanism, username, password}`. A failed login ends the run
// with exit 1 and kafkajs' error in "errors".
//
// KAFKAJS_CHECK_DEBUG=1 prints kafkajs' DEBUG log (every request with its API
// version) on stderr. The summary always lists the API versions used
// ("api_versions").
'use strict'

const fs = require('fs')

// Partitions are explicit here, so kafkajs' note about its v2 default partitioner is noise.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, CompressionTypes, ConfigResourceTypes, logLevel } = require('kafkajs')

const OVERALL_TIMEOUT_MS = 240000
const MAX_ERRORS = 20
const PROTOCOLS = ['PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL']
const MECHANISMS = ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']
const SECURITY_USAGE = '[--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL] ' +
  '[--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P] ' +
  '[--ssl-ca FILE] [--ssl-cert FILE --ssl-key FILE]'

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

function parseArgs(argv) {
  const a = {
    bootstrap: null, topic: null, messages: null, partitions: 3, compression: 'none', seed: 1,
    dump: null, batch: 500, idempotent: true, expectOffsetSkew: 0, alterConfigs: true,
    securityProtocol: 'PLAINTEXT', saslMechanism: null, saslUsername: null, saslPassword: null,
    sslCa: null, sslCert: null, sslKey: null,
  }
  const need = (i) => {
    if (i + 1 >= argv.length) throw new Error(`missing value for ${argv[i]}`)
    return argv[i + 1]
  }
  const int = (s, name, min) => {
    if (!/^-?\d+$/.test(s) || Number(s) < min) throw new Error(`bad ${name}: ${s}`)
    return Number(s)
  }
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--bootstrap': a.bootstrap = need(i); i++; break
      case '--topic': a.topic = need(i); i++; break
      case '--messages': a.messages = int(need(i), '--messages', 0); i++; break
      case '--partitions': a.partitions = int(need(i), '--partitions', 1); i++; break
      case '--compression': a.compression = need(i); i++; break
      case '--seed': a.seed = int(need(i), '--seed', 0); i++; break
      case '--dump': a.dump = need(i); i++; break
      case '--batch': a.batch = int(need(i), '--batch', 1); i++; break
      case '--no-idempotent': a.idempotent = false; break
      // A mirror topic (Chronik) takes config changes only in its home region.
      case '--no-alter-configs': a.alterConfigs = false; break
      case '--expect-offset-skew': a.expectOffsetSkew = int(need(i), '--expect-offset-skew', -1e9); i++; break
      case '--security-protocol': a.securityProtocol = need(i); i++; break
      case '--sasl-mechanism': a.saslMechanism = need(i); i++; break
      case '--sasl-username': a.saslUsername = need(i); i++; break
      case '--sasl-password': a.saslPassword = need(i); i++; break
      case '--ssl-ca': a.sslCa = need(i); i++; break
      case '--ssl-cert': a.sslCert = need(i); i++; break
      case '--ssl-key': a.sslKey = need(i); i++; break
      default: throw new Error(`unknown argument ${argv[i]}`)
    }
  }
  validateSecurity(a)
  if (!a.bootstrap || !a.topic || a.messages === null) {
    throw new Error('usage: --bootstrap H:P --topic T --messages N [--partitions P] [--compression none|gzip] ' +
      '[--seed S] [--dump FILE] [--batch B] [--no-idempotent] [--expect-offset-skew K] [--no-alter-configs] ' +
      SECURITY_USAGE)
  }
  if (!['none', 'gzip'].includes(a.compression)) {
    throw new Error(`--compression must be none or gzip (kafkajs has no built-in snappy/lz4/zstd), got ${a.compression}`)
  }
  return a
}

function validateSecurity(a) {
  const p = a.securityProtocol
  const sasl = p === 'SASL_PLAINTEXT' || p === 'SASL_SSL'
  const tls = p === 'SSL' || p === 'SASL_SSL'
  if (!PROTOCOLS.includes(p)) throw new Error(`unknown --security-protocol "${p}" (${PROTOCOLS.join('|')})`)
  if (sasl) {
    if (a.saslMechanism === null || a.saslUsername === null || a.saslPassword === null) {
      throw new Error(`${p} needs --sasl-mechanism, --sasl-username and --sasl-password`)
    }
    if (!MECHANISMS.includes(a.saslMechanism)) {
      throw new Error(`unknown --sasl-mechanism "${a.saslMechanism}" (${MECHANISMS.join('|')})`)
    }
  } else if (a.saslMechanism !== null || a.saslUsername !== null || a.saslPassword !== null) {
    throw new Error('--sasl-* flags need --security-protocol SASL_PLAINTEXT or SASL_SSL')
  }
  if (!tls && (a.sslCa !== null || a.sslCert !== null || a.sslKey !== null)) {
    throw new Error('--ssl-* flags need --security-protocol SSL or SASL_SSL')
  }
  if ((a.sslCert === null) !== (a.sslKey === null)) throw new Error('--ssl-cert and --ssl-key go together')
}

// kafkajs' `ssl` and `sasl` client options for the security flags.
function securityOptions(a) {
  const out = {}
  const p = a.securityProtocol
  if (p === 'SSL' || p === 'SASL_SSL') {
    const ssl = {}
    if (a.sslCa) ssl.ca = [fs.readFileSync(a.sslCa, 'utf8')]
    if (a.sslCert) {
      ssl.cert = fs.readFileSync(a.sslCert, 'utf8')
      ssl.key = fs.readFileSync(a.sslKey, 'utf8')
    }
    out.ssl = Object.keys(ssl).length ? ssl : true
  }
  if (p === 'SASL_PLAINTEXT' || p === 'SASL_SSL') {
    // kafkajs names the mechanisms in lower case.
    out.sasl = { mechanism: a.saslMechanism.toLowerCase(), username: a.saslUsername, password: a.saslPassword }
    out.authenticationTimeout = 10000
  }
  return out
}

// ---------------------------------------------------------------------------
// Deterministic content: record i depends only on (seed, i).
// ---------------------------------------------------------------------------

// splitmix32-style mixer, then a small xorshift-multiply PRNG (mulberry32).
function mix32(x) {
  x = (x + 0x9e3779b9) | 0
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b)
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35)
  return (x ^ (x >>> 16)) >>> 0
}

function rngFor(seed, i) {
  let s = mix32(mix32(seed) ^ Math.imul(i + 1, 0x27d4eb2d))
  const next = () => {
    s = (s + 0x6d2b79f5) | 0
    let t = Math.imul(s ^ (s >>> 15), 1 | s)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    f: next, // [0, 1)
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), // [lo, hi]
  }
}

const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
const WORDS = ['kafka', 'chronik', 'broker', 'partition', 'offset', 'record', 'batch', 'leader',
  'replica', 'segment', 'consumer', 'producer', 'topic', 'header', 'gzip', 'idempotent']
// Header keys: a small set, so duplicates and the empty key occur; one is non-ASCII.
// None looks like an array index ("0", "1", ...): JS objects list those first,
// which would reorder kafkajs' headers.
const HEADER_KEYS = ['trace-id', 'dup', '', 'køy', 'content-type', 'x-b']

function randBytes(r, n) {
  const b = Buffer.allocUnsafe(n)
  for (let j = 0; j < n; j++) b[j] = Math.floor(r.f() * 256)
  return b
}

function randValue(r, n) {
  const style = r.int(0, 2)
  if (style === 0) return randBytes(r, n)
  if (style === 1) {
    const parts = []
    let len = 0
    while (len < n) {
      const w = WORDS[r.int(0, WORDS.length - 1)]
      parts.push(w)
      len += w.length + 1
    }
    return Buffer.from(parts.join(' ')).subarray(0, n)
  }
  const pat = randBytes(r, r.int(1, 16))
  const b = Buffer.allocUnsafe(n)
  for (let j = 0; j < n; j++) b[j] = pat[j % pat.length]
  return b
}

// One record: {key, value, headers: [[key, Buffer]...] in wire order}.
function genRecord(seed, i) {
  const r = rngFor(seed, i)
  let key
  const kr = r.f()
  if (kr < 0.05) key = null
  else if (kr < 0.07) key = Buffer.alloc(0)
  else {
    const n = r.int(0, 23)
    let s = ''
    for (let j = 0; j < n; j++) s += ALNUM[r.int(0, ALNUM.length - 1)]
    key = Buffer.from(`key-${i}-${s}`)
  }
  let value
  const vr = r.f()
  if (vr < 0.01) value = null
  else if (vr < 0.04) value = Buffer.alloc(0)
  else if (vr < 0.042) value = randValue(r, r.int(96 * 1024, 104 * 1024))
  else if (vr < 0.10) value = randValue(r, r.int(1024, 10 * 1024))
  else value = randValue(r, r.int(10, 200))
  // kafkajs takes headers as an object {key: value | [values]}: it sends them in
  // key insertion order, repeated keys as consecutive headers. So the wire order is
  // "grouped by first occurrence"; that order is what we record and verify.
  // kafkajs cannot send a null header value (its size computation calls
  // Buffer.byteLength(null) and throws), so values are empty or 1-64 bytes.
  const nh = r.int(0, 3)
  const groups = new Map()
  for (let h = 0; h < nh; h++) {
    const hk = HEADER_KEYS[r.int(0, HEADER_KEYS.length - 1)]
    const hv = r.f() < 0.3 ? Buffer.alloc(0) : randBytes(r, r.int(1, 64))
    if (!groups.has(hk)) groups.set(hk, [])
    groups.get(hk).push(hv)
  }
  const headers = []
  for (const [hk, vs] of groups) for (const hv of vs) headers.push([hk, hv])
  return { key, value, headers }
}

function kafkajsHeaders(headers) {
  const o = {}
  for (const [k, v] of headers) {
    if (!(k in o)) o[k] = []
    o[k].push(v)
  }
  for (const k of Object.keys(o)) if (o[k].length === 1) o[k] = o[k][0]
  return o
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const summary = {
  client: 'kafkajs', produced: 0, offsets: {}, errors: [], error_count: 0,
  topic: null, partitions: null, compression: null, seed: null, idempotent: null,
  timestamp_checks: 0, api_versions: {}, produce_ms: null, kafkajs_version: null,
}

function addError(msg) {
  summary.error_count++
  if (summary.errors.length < MAX_ERRORS) summary.errors.push(msg)
}

let finished = false
const apiVersions = {} // apiName -> Set of versions seen in requests

function finish(code) {
  if (finished) return
  finished = true
  summary.api_versions = {}
  for (const [name, vs] of Object.entries(apiVersions)) summary.api_versions[name] = [...vs].sort((a, b) => a - b)
  process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code))
}

function log(msg) {
  process.stderr.write(`[kafkajs_check] ${msg}\n`)
}

async function main() {
  let args
  try {
    args = parseArgs(process.argv.slice(2))
  } catch (e) {
    addError(`arguments: ${e.message}`)
    return 1
  }
  const P0 = args.partitions
  Object.assign(summary, { topic: args.topic, partitions: P0, compression: args.compression, seed: args.seed,
    idempotent: args.idempotent })
  try {
    summary.kafkajs_version = require('kafkajs/package.json').version
  } catch (e) { /* ignore */ }

  const debug = process.env.KAFKAJS_CHECK_DEBUG === '1'
  const logCreator = () => ({ namespace, level, label, log: entry }) => {
    const m = /^Request (\w+)\(key: (-?\d+), version: (\d+)\)$/.exec(entry.message || '')
    if (m) {
      if (!apiVersions[m[1]]) apiVersions[m[1]] = new Set()
      apiVersions[m[1]].add(Number(m[3]))
    }
    if (debug || level <= logLevel.WARN) {
      const { message, timestamp, logger, data, ...rest } = entry
      let extra = ''
      try { extra = JSON.stringify(rest) } catch (e) { extra = '' }
      if (extra.length > 2000) extra = extra.slice(0, 2000) + '...'
      process.stderr.write(`${timestamp} ${label} [${namespace}] ${message} ${extra}\n`)
    }
  }

  let security
  try {
    security = securityOptions(args)
  } catch (e) {
    addError(`arguments: ${e.message}`)
    return 1
  }
  const kafka = new Kafka({
    ...security,
    clientId: 'kafkajs-check',
    brokers: args.bootstrap.split(','),
    connectionTimeout: 10000,
    requestTimeout: 30000,
    logLevel: logLevel.DEBUG, // needed to see the "Request Api(key, version)" lines
    logCreator,
    retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 5000 },
  })
  const admin = kafka.admin()
  // The producer inherits the client's 5 retries (kafkajs would default an idempotent
  // producer to unlimited ones), so a failing broker ends the run instead of hanging;
  // kafkajs logs a warning that this "may invalidate EoS guarantees".
  const producer = kafka.producer({
    idempotent: args.idempotent,
    maxInFlightRequests: args.idempotent ? 1 : undefined,
    allowAutoTopicCreation: false,
  })
  const N = args.messages
  let P = P0
  const skew = args.expectOffsetSkew
  try {
    await admin.connect()

    // 1. Topic
    const created = await admin.createTopics({
      topics: [{ topic: args.topic, numPartitions: P0, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 60000,
    })
    log(created ? `created ${args.topic} (${P0} partitions)` : `${args.topic} already exists`)
    const deadline = Date.now() + 60000
    for (;;) {
      const md = await admin.fetchTopicMetadata({ topics: [args.topic] })
      const parts = md.topics[0].partitions
      if (parts.length > 0 && parts.every(p => p.leader >= 0)) {
        if (parts.length !== P0) {
          log(`note: ${args.topic} has ${parts.length} partitions, not ${P0}; using ${parts.length}`)
          P = parts.length
          summary.partitions = P
        }
        break
      }
      if (Date.now() > deadline) throw new Error(`topic ${args.topic} has no leader for every partition after 60s`)
      await new Promise(res => setTimeout(res, 200))
    }

    // 2. Produce
    await producer.connect()
    const base = Date.now() - N - 1000
    const dump = args.dump ? [] : null
    const compression = args.compression === 'gzip' ? CompressionTypes.GZIP : CompressionTypes.None
    const t0 = Date.now()
    for (let start = 0; start < N; start += args.batch) {
      const end = Math.min(N, start + args.batch)
      const msgs = []
      const recs = []
      for (let i = start; i < end; i++) {
        const rec = genRecord(args.seed, i)
        recs.push(rec)
        const m = { key: rec.key, value: rec.value, partition: i % P, timestamp: String(base + i) }
        if (rec.headers.length) m.headers = kafkajsHeaders(rec.headers)
        msgs.push(m)
      }
      const res = await producer.send({ topic: args.topic, acks: -1, compression, messages: msgs, timeout: 30000 })
      // 3. Acked offsets: one RecordMetadata per partition with the batch's baseOffset;
      // kafkajs keeps the per-partition order of `messages`.
      const baseOf = new Map()
      for (const md of res) {
        if (md.topicName !== args.topic) addError(`ack for unexpected topic ${md.topicName}`)
        if (md.errorCode !== 0) addError(`ack partition ${md.partition}: errorCode ${md.errorCode}`)
        baseOf.set(md.partition, Number(md.baseOffset))
      }
      const seen = new Map()
      for (let i = start; i < end; i++) {
        const p = i % P
        const k = seen.get(p) || 0
        seen.set(p, k + 1)
        if (!baseOf.has(p)) {
          addError(`record ${i} partition ${p}: no ack for the partition`)
          continue
        }
        const off = baseOf.get(p) + k
        const want = Math.floor(i / P) + skew
        if (off !== want) addError(`record ${i} partition ${p}: acked offset ${off}, want ${want}`)
        if (dump) {
          const rec = recs[i - start]
          dump.push({
            i, p, o: off, ts: base + i,
            k: rec.key === null ? null : rec.key.toString('base64'),
            v: rec.value === null ? null : rec.value.toString('base64'),
            h: rec.headers.map(([hk, hv]) => [hk, hv.toString('base64')]),
          })
        }
      }
      summary.produced += end - start
    }
    summary.produce_ms = Date.now() - t0
    log(`produced ${summary.produced} in ${summary.produce_ms} ms`)

    // 4. End offsets (ListOffsets latest/earliest)
    const count = p => (N > p ? Math.floor((N - 1 - p) / P) + 1 : 0)
    const offs = await admin.fetchTopicOffsets(args.topic)
    const got = new Map(offs.map(o => [o.partition, o]))
    for (let p = 0; p < P; p++) {
      const o = got.get(p)
      if (!o) {
        addError(`fetchTopicOffsets: partition ${p} missing`)
        continue
      }
      summary.offsets[p] = Number(o.high)
      if (Number(o.high) !== count(p) + skew) addError(`partition ${p}: end offset ${o.high}, want ${count(p) + skew}`)
      if (Number(o.low) !== 0 + skew) addError(`partition ${p}: earliest offset ${o.low}, want ${0 + skew}`)
    }
    if (offs.length !== P) addError(`fetchTopicOffsets: ${offs.length} partitions, want ${P}`)

    // 5. Timestamp lookups (ListOffsets by timestamp). Record i has timestamp base+i and
    // sits at offset floor(i/P) of partition i%P. For a timestamp base+k the answer is
    // the offset of the first record i >= k of the partition; kafkajs returns the end
    // offset when there is none (the broker answers -1).
    const lookups = [0, 1, Math.floor(N / 2), N - 1, N + 1000].filter(k => k >= 0)
    for (const k of [...new Set(lookups)]) {
      const res = await admin.fetchTopicOffsetsByTimestamp(args.topic, base + k)
      const byP = new Map(res.map(o => [o.partition, Number(o.offset)]))
      for (let p = 0; p < P; p++) {
        const i = k + (((p - k) % P) + P) % P
        const want = (i < N ? Math.floor(i / P) : count(p)) + skew
        summary.timestamp_checks++
        if (!byP.has(p)) addError(`timestamp ${base + k} (record ${k}): partition ${p} missing`)
        else if (byP.get(p) !== want) addError(`timestamp ${base + k} (record ${k}): partition ${p} offset ${byP.get(p)}, want ${want}`)
      }
    }

    if (args.alterConfigs) {
      // 6. Topic configs through kafkajs's admin API (AlterConfigs, then
      // DescribeConfigs): the retention set must be read back.
      await admin.alterConfigs({
        validateOnly: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: args.topic,
                      configEntries: [{ name: 'retention.ms', value: '86400000' }] }],
      })
      const described = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: args.topic, configNames: ['retention.ms'] }],
      })
      const entry = described.resources[0].configEntries.find(e => e.configName === 'retention.ms')
      if (!entry || entry.configValue !== '86400000') addError(`retention.ms after alterConfigs: ${JSON.stringify(entry)}`)
    }

    if (dump) {
      fs.writeFileSync(args.dump, JSON.stringify({
        client: 'kafkajs', topic: args.topic, partitions: P, compression: args.compression, seed: args.seed,
        base_ts: base, records: dump,
      }))
      log(`wrote ${dump.length} records to ${args.dump}`)
    }
  } catch (e) {
    const parts = [e.name, e.type, e.message].filter(Boolean)
    addError(`exception: ${parts.join(': ')}`)
    log(e.stack || String(e))
  } finally {
    await Promise.race([
      Promise.allSettled([producer.disconnect(), admin.disconnect()]),
      new Promise(res => setTimeout(res, 5000)),
    ])
  }
  return summary.error_count === 0 && summary.produced === N ? 0 : 1
}

const watchdog = setTimeout(() => {
  addError(`overall timeout after ${OVERALL_TIMEOUT_MS} ms`)
  finish(1)
}, OVERALL_TIMEOUT_MS)
watchdog.unref()

main().then(code => finish(code), e => {
  addError(`exception: ${e && e.message}`)
  finish(1)
})
