#!/usr/bin/env bash
# `make test`'s client suite, in two lanes at once: most tests spend their
# time waiting on clusters, elections and timeouts, not on the CPU, so two
# lanes halve the wall time on the 2-core CI machine.
#   - the clients lane: the suites that run side by side with Apache Kafka
#     (security, groups, clients, conformance, Kafka's CLIs, the one-region
#     cluster faults), then the second pass of the conformance and client
#     suites against three-broker regions and a three-broker Kafka cluster;
#   - the regions lane: every other test_*.py (multi-region, failover,
#     failback, forwarding, runbooks, soak, deploy...), so a new test file
#     runs without being listed here.
# Each lane has its own pytest base directory; the regions lane's output is
# printed after the clients lane's. PYTEST_ARGS (options such as -k or -x)
# applies to every run. Exit status: non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")"

CLIENTS_LANE=(test_security.py test_groups.py test_clients.py test_group_clients.py
  test_java_idempotence.py test_kafka_cli.py test_conformance.py test_crash.py
  test_kafkajs.py test_bad_input.py test_faultproxy.py test_ackcheck.py test_cluster.py)
CLUSTERED_PASS=(test_conformance.py test_bad_input.py test_clients.py test_kafkajs.py
  test_groups.py test_kafka_cli.py)
REGIONS_LANE=()
for f in test_*.py; do
  [[ " ${CLIENTS_LANE[*]} " == *" $f "* ]] || REGIONS_LANE+=("$f")
done

base="${TMPDIR:-/tmp}/chronik-test-lanes"
rm -rf "$base" && mkdir -p "$base"
# shellcheck disable=SC2206
args=(-q -p no:cacheprovider ${PYTEST_ARGS:-})
started=$(date +%s)

( python3 -m pytest "${args[@]}" --basetemp="$base/regions" "${REGIONS_LANE[@]}" > "$base/regions.log" 2>&1
  echo $? > "$base/regions.rc"
  echo "== the regions lane took $(( $(date +%s) - started )) s" >> "$base/regions.log" ) &
regions_lane=$!

echo "== the clients lane: ${CLIENTS_LANE[*]}"
python3 -m pytest "${args[@]}" --basetemp="$base/clients" "${CLIENTS_LANE[@]}"; clients=$?
echo "== the clients lane's three-broker pass: ${CLUSTERED_PASS[*]}"
CHRONIK_TEST_BROKERS=3 python3 -m pytest "${args[@]}" --basetemp="$base/clustered" "${CLUSTERED_PASS[@]}"; clustered=$?
echo "== the clients lane took $(( $(date +%s) - started )) s"

wait "$regions_lane"
echo "== the regions lane: ${REGIONS_LANE[*]}"
cat "$base/regions.log"
regions=$(cat "$base/regions.rc" 2>/dev/null || echo 1)
echo "== lanes: clients $clients, three-broker pass $clustered, regions $regions"
[ "$clients" = 0 ] && [ "$clustered" = 0 ] && [ "$regions" = 0 ]
