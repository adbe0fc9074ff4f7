#!/usr/bin/env bash
# `make test`'s client suite, in two lanes at once: most tests spend their
# time waiting on clusters, elections and timeouts, not on the CPU, so two
# lanes halve the wall time on the 2-core CI machine.
#   - the clients lane: the suites that run side by side with Apache Kafka
#     (security, groups, clients, conformance, Kafka's CLIs, the one-region
#     cluster faults and membership, compaction, Kafka Connect, transactions);
#   - the regions lane: every other test_*.py (multi-region, failover,
#     failback, forwarding, runbooks, soak, deploy...), so a new test file
#     runs without being listed here.
# The three-broker pass of the conformance and client suites runs after
# whichever lane finishes first. Each run has its own pytest base directory
# and log, printed at the end. PYTEST_ARGS (options such as -k or -x)
# applies to every run. Exit status: non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")"

CLIENTS_LANE=(test_security.py test_acls.py test_groups.py test_clients.py test_group_clients.py
  test_java_idempotence.py test_kafka_cli.py test_conformance.py test_crash.py
  test_kafkajs.py test_bad_input.py test_faultproxy.py test_ackcheck.py test_cluster.py
  test_membership.py test_compaction.py test_connect.py test_transactions.py)
CLUSTERED_PASS=(test_conformance.py test_bad_input.py test_clients.py test_kafkajs.py
  test_groups.py test_kafka_cli.py test_compaction.py)
REGIONS_LANE=()
for f in test_*.py; do
  [[ " ${CLIENTS_LANE[*]} " == *" $f "* ]] || REGIONS_LANE+=("$f")
done

base="${TMPDIR:-/tmp}/chronik-test-lanes"
rm -rf "$base" && mkdir -p "$base"
# shellcheck disable=SC2206
args=(-q -p no:cacheprovider ${PYTEST_ARGS:-})
started=$(date +%s)

# Each run at once takes its ports from a range of its own (harness.free_port), below the
# kernel's ephemeral range so that no outbound connection takes one.
CLIENTS_PORTS=10000-15499
REGIONS_PORTS=15500-20999
lane() {  # lane NAME PORTS FILE... : one pytest run in the background, output to NAME.log
  local name=$1 ports=$2; shift 2
  ( CHRONIK_TEST_PORTS=$ports python3 -m pytest "${args[@]}" --basetemp="$base/$name" "$@" > "$base/$name.log" 2>&1
    echo $? > "$base/$name.rc"
    echo "== the $name lane took $(( $(date +%s) - started )) s" >> "$base/$name.log" ) &
}
lane clients "$CLIENTS_PORTS" "${CLIENTS_LANE[@]}"
lane regions "$REGIONS_PORTS" "${REGIONS_LANE[@]}"
# The three-broker pass starts as soon as either lane is done, in its place (and its ports).
wait -n
freed=$REGIONS_PORTS
[ -f "$base/clients.rc" ] && freed=$CLIENTS_PORTS
CHRONIK_TEST_BROKERS=3 lane clustered "$freed" "${CLUSTERED_PASS[@]}"
wait
status=0
for name in clients regions clustered; do
  echo "== the $name lane"
  cat "$base/$name.log"
  rc=$(cat "$base/$name.rc" 2>/dev/null || echo 1)
  echo "== the $name lane: exit $rc"
  [ "$rc" = 0 ] || status=1
done
exit $status
