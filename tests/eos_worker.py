"""consume -> process -> produce, exactly once, for tests/test_txn_kill.py: reads topic
``in`` in group ``g``, publishes ``<value>-out`` to topic ``out2`` and commits the
group's offsets in the same transaction (``tx.commit_offsets``), ``batch`` records per
transaction, until the group has committed ``n``. Prints ``ready`` once it joined."""
import sys

import fastq


def main():
    path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    b = fastq.open(path)
    b.transaction("eos").abort()             # open the id first: it finishes what a killed one left
    c = b.topic("in").consumer("g")          # resumes from the group's committed offset
    print("ready", flush=True)
    while (c.committed().get(0) or 0) < n:
        recs = c.poll(max_records=batch, timeout=1)
        if not recs:
            continue
        with b.transaction("eos") as tx:
            for r in recs:
                tx.publish("out2", bytes(r.value) + b"-out", partition=0)
            tx.commit_offsets(c)
    c.close()
    b.close()


if __name__ == "__main__":
    main()
