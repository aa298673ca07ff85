"""A transactional producer for tests/test_txn_kill.py: runs transactions of the
transactional id ``txid`` that write 2 records to topic ``out`` partition 0, a batch of
3 to partition 1 and 1 record to topic ``other``; every fourth one is aborted on
purpose. Values are ``<run>:<i>:<j>``. After a commit returns it appends ``i`` to the
ack file. ``crash``: ``step:n`` kills this process (SIGKILL) at the n-th time the
transaction reaches ``step`` (add_partition, publish, prepare, marker, complete)."""
import os
import signal
import sys

import fastq


def main():
    path, txid, run, ntx, ackpath, crash = sys.argv[1:7]
    run, ntx = int(run), int(ntx)
    b = fastq.open(path)
    counts = {}
    step_at, _, n_at = crash.partition(":")

    def hook(step):
        counts[step] = counts.get(step, 0) + 1
        if step == step_at and counts[step] == int(n_at):
            os.kill(os.getpid(), signal.SIGKILL)

    tx = b.transaction(txid)
    b._txns[txid]._hook = hook
    tx.abort()
    print("ready", flush=True)
    with open(ackpath, "a") as ack:
        for i in range(ntx):
            try:
                with b.transaction(txid) as tx:
                    tx.publish("out", b"%d:%d:0" % (run, i), partition=0)
                    tx.publish_many("out", [b"%d:%d:%d" % (run, i, j) for j in (1, 2, 3)], partition=1)
                    tx.publish("out", b"%d:%d:4" % (run, i), partition=0)
                    tx.publish("other", b"%d:%d:5" % (run, i), partition=0)
                    if i % 4 == 3:
                        raise LookupError("abort on purpose")
            except LookupError:
                continue
            ack.write(f"{run}:{i}\n")
            ack.flush()
    b.close()


if __name__ == "__main__":
    main()
