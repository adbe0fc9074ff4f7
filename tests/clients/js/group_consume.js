#!/usr/bin/env node
// group-consume (kafkajs): consume a topic as a member of a consumer group, log every
// processed record and every rebalance, commit synchronously after each batch. Same
// interface as the Java, Go and Python programs (described in
// tests/test_group_clients.py):
//
//   node group_consume.js --bootstrap H:P[,H:P] --topic T --group G --out FILE
//        [--max-seconds S] [--idle-exit-ms N] [--assignor range] [--instance-id ID]
//        [--session-timeout-ms N] [--heartbeat-interval-ms N]
//
// kafkajs has no cooperative rebalancing (--assignor cooperative-sticky exits 1) and no
// static membership (--instance-id exits 1). Its only built-in assignor is
// "RoundRobinAssigner", so this program brings a "range" assignor (the Java
// RangeAssignor's algorithm and protocol name) to interoperate with other clients.
//
// FILE: one "partition offset value" line per processed record, written before the
// batch's commit. FILE.rebalance: "epoch_ms event partitions [detail]" lines. kafkajs
// reports a completed join (GROUP_JOIN, "assigned" with the member's partitions) and the
// start of a rebalance (REBALANCING, logged as "revoked" of everything it owned: kafkajs is
// eager); after disconnect it logs what it owned as revoked too. One JSON summary line on stdout. Exit 0 on SIGTERM, idle exit or max-seconds
// (after disconnect, which leaves the group); 2 if the consumer crashed; 1 on bad arguments.
'use strict'

const fs = require('fs')

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel, AssignerProtocol } = require('kafkajs')

const { MemberMetadata, MemberAssignment } = AssignerProtocol

function parseArgs(argv) {
  const a = {
    bootstrap: null, topic: null, group: null, out: null, maxSeconds: 120, idleExitMs: 0, assignor: 'range',
    instanceId: null, sessionTimeoutMs: 6000, heartbeatIntervalMs: 1000,
  }
  const need = (i) => {
    if (i + 1 >= argv.length) throw new Error(`missing value for ${argv[i]}`)
    return argv[i + 1]
  }
  for (let i = 0; i < argv.length; i++) {
    const v = need(i)
    switch (argv[i]) {
      case '--bootstrap': a.bootstrap = v; break
      case '--topic': a.topic = v; break
      case '--group': a.group = v; break
      case '--out': a.out = v; break
      case '--max-seconds': a.maxSeconds = Number(v); break
      case '--idle-exit-ms': a.idleExitMs = Number(v); break
      case '--assignor': a.assignor = v; break
      case '--instance-id': a.instanceId = v; break
      case '--session-timeout-ms': a.sessionTimeoutMs = Number(v); break
      case '--heartbeat-interval-ms': a.heartbeatIntervalMs = Number(v); break
      default: throw new Error(`unknown argument ${argv[i]}`)
    }
    i++
  }
  if (!a.bootstrap || !a.topic || !a.group || !a.out) {
    throw new Error('usage: --bootstrap H:P --topic T --group G --out FILE [--max-seconds S] [--idle-exit-ms N] ' +
      '[--assignor range] [--session-timeout-ms N] [--heartbeat-interval-ms N]')
  }
  if (a.assignor !== 'range') throw new Error(`kafkajs has no ${a.assignor} assignor (eager protocol only)`)
  if (a.instanceId) throw new Error('kafkajs has no static membership (group.instance.id)')
  return a
}

// The Java RangeAssignor: per topic, members (sorted by id) subscribed to it get
// consecutive ranges, the first (partitions % members) one partition more.
const RangeAssigner = ({ cluster }) => ({
  name: 'range',
  version: 0,
  async assign({ members, topics }) {
    const ids = members.map(m => m.memberId).sort()
    const assignment = Object.fromEntries(ids.map(id => [id, {}]))
    for (const topic of topics) {
      const subs = members
        .filter(m => MemberMetadata.decode(m.memberMetadata).topics.includes(topic))
        .map(m => m.memberId)
        .sort()
      if (subs.length === 0) continue
      const parts = cluster.findTopicPartitionMetadata(topic).map(m => m.partitionId).sort((x, y) => x - y)
      const per = Math.floor(parts.length / subs.length)
      const extra = parts.length % subs.length
      subs.forEach((id, i) => {
        const start = per * i + Math.min(i, extra)
        assignment[id][topic] = parts.slice(start, start + per + (i < extra ? 1 : 0))
      })
    }
    return ids.map(memberId => ({
      memberId,
      memberAssignment: MemberAssignment.encode({ version: 0, assignment: assignment[memberId] }),
    }))
  },
  protocol({ topics }) {
    return { name: 'range', metadata: MemberMetadata.encode({ version: 0, topics }) }
  },
})

async function main() {
  let a
  try {
    a = parseArgs(process.argv.slice(2))
  } catch (e) {
    process.stderr.write(`group-consume: ${e.message}\n`)
    return 1
  }
  const recFd = fs.openSync(a.out, 'a')
  const evFd = fs.openSync(a.out + '.rebalance', 'a')
  const sum = {
    client: 'kafkajs', consumed: 0, batches: 0, commits: 0, commit_failures: 0, exit: '',
    error_class: null, error_message: null,
  }
  const event = (what, parts, detail) => {
    const ps = parts && parts.length ? [...new Set(parts)].sort((x, y) => x - y).join(',') : '-'
    const line = `${Date.now()} ${what} ${ps}` + (detail ? ` ${String(detail).replace(/\n/g, ' ')}` : '')
    fs.writeSync(evFd, line + '\n')
    process.stderr.write(`[group-consume kafkajs] ${line}\n`)
  }

  const kafka = new Kafka({
    clientId: `group-consume-kafkajs-${process.pid}`,
    brokers: a.bootstrap.split(','),
    logLevel: process.env.KAFKAJS_CHECK_DEBUG ? logLevel.DEBUG : logLevel.WARN,
    retry: { retries: 5 },
  })
  const consumer = kafka.consumer({
    groupId: a.group,
    sessionTimeout: a.sessionTimeoutMs,
    heartbeatInterval: a.heartbeatIntervalMs,
    rebalanceTimeout: 30000,
    maxWaitTimeInMs: 100,
    partitionAssigners: [RangeAssigner],
    retry: { retries: 5, restartOnFailure: async () => false },
  })

  let owned = []
  let stopping = false
  let crashed = null
  let lastRecord = Date.now()
  const start = Date.now()
  let wake
  const done = new Promise(resolve => { wake = resolve })

  consumer.on(consumer.events.GROUP_JOIN, e => {
    owned = (e.payload.memberAssignment && e.payload.memberAssignment[a.topic]) || []
    event('assigned', owned)
  })
  consumer.on(consumer.events.REBALANCING, () => {
    event('revoked', owned)
    owned = []
  })
  consumer.on(consumer.events.CRASH, e => {
    crashed = e.payload.error
    event('error', null, `${crashed.name}: ${crashed.message} (restart=${e.payload.restart})`)
    if (!e.payload.restart) wake('error')
  })
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => { stopping = true; wake('sigterm') })
  }

  event('start', null, `client=kafkajs assignor=${a.assignor} pid=${process.pid}`)
  const ticker = setInterval(() => {
    const now = Date.now()
    if (now - start >= a.maxSeconds * 1000) wake('max-seconds')
    else if (a.idleExitMs > 0 && sum.consumed > 0 && now - lastRecord >= a.idleExitMs) wake('idle')
  }, 100)

  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [a.topic], fromBeginning: true })
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset, isRunning, isStale }) => {
        if (stopping || !isRunning() || isStale() || batch.messages.length === 0) return
        const lines = batch.messages.map(m =>
          `${batch.partition} ${m.offset} ${m.value === null ? 'null' : m.value.toString('utf8')}\n`)
        fs.writeSync(recFd, lines.join(''))
        for (const m of batch.messages) resolveOffset(m.offset)
        sum.consumed += batch.messages.length
        sum.batches++
        lastRecord = Date.now()
        const next = (BigInt(batch.messages[batch.messages.length - 1].offset) + 1n).toString()
        try {
          await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }])
          sum.commits++
        } catch (e) {
          sum.commit_failures++
          event('commit-failed', [batch.partition], `n=${batch.messages.length} ${e.name}: ${e.message}`)
        }
      },
    })
  } catch (e) {
    crashed = e
    event('error', null, `${e.name}: ${e.message}`)
    wake('error')
  }

  sum.exit = await done
  clearInterval(ticker)
  if (crashed) {
    sum.exit = 'error'
    sum.error_class = crashed.name
    sum.error_message = crashed.message
  }
  event('closing', null, sum.exit)
  try {
    await consumer.disconnect() // leaves the group
  } catch (e) {
    event('client-error', null, `disconnect: ${e.message}`)
  }
  // kafkajs has no revoke callback on disconnect: it drops its assignment, log that.
  if (owned.length) event('revoked', owned)
  owned = []
  event('exit', null, sum.exit)
  fs.closeSync(recFd)
  fs.closeSync(evFd)
  process.stdout.write(JSON.stringify(sum) + '\n')
  return crashed ? 2 : 0
}

main().then(
  rc => process.exit(rc),
  e => {
    process.stderr.write(`group-consume: fatal: ${e && e.stack}\n`)
    process.exit(2)
  })
