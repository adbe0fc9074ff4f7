#!/usr/bin/env node
// kafkajs over TLS and SASL (tests/test_security.py): produces N records to one
// partition with acks=-1 and prints the acked base offsets as one JSON line.
// Exit 0 on success; 1 with {"error": "..."} on any failure (authentication included).
//
//   node sasl_produce.js --bootstrap H:P --topic T --messages N --mechanism scram-sha-512
//        --username U --password P [--ca FILE]
'use strict'
const fs = require('fs')
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel } = require('kafkajs')

const args = {}
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1]

async function main() {
  const kafka = new Kafka({
    clientId: 'sasl-check',
    brokers: [args.bootstrap],
    ssl: args.ca ? { ca: [fs.readFileSync(args.ca, 'utf8')] } : false,
    sasl: { mechanism: args.mechanism, username: args.username, password: args.password },
    logLevel: logLevel.NOTHING,
    connectionTimeout: 10000,
    authenticationTimeout: 10000,
    retry: { retries: 2 },
  })
  const producer = kafka.producer()
  await producer.connect()
  const n = parseInt(args.messages, 10)
  const messages = []
  for (let i = 0; i < n; i++) messages.push({ partition: 0, value: `${args.topic}-${i}` })
  const res = await producer.send({ topic: args.topic, acks: -1, messages })
  await producer.disconnect()
  console.log(JSON.stringify({ ok: true, base_offsets: res.map(r => r.baseOffset) }))
}

main().then(() => process.exit(0), e => {
  console.log(JSON.stringify({ ok: false, error: `${e.name}: ${e.message}` }))
  process.exit(1)
})
