"""Two machines of one process each, on this host: `accelerate launch` with configs/accelerate/multi_node.yaml,
once per machine (--machine_rank 0 and 1, loopback rendezvous), CPU and gloo.

Why this launch: `accelerate launch --cpu --num_machines 2` (a MULTI_CPU config likewise) does not join the
machines: without --mpirun_hostfile it starts one plain process per machine with no RANK or WORLD_SIZE, so each
trains alone (Accelerate 1.15: DistributedType.NO, and the second one finds the run folder taken). The
MULTI_GPU launch hands each machine to torch.distributed.run, which is what a GPU cluster runs; without GPUs the
trainer asks Accelerate for the CPU, so the same launch trains with gloo. It is `torchrun --nnodes 2
--node_rank R --master_addr 127.0.0.1 --master_port P --nproc_per_node 1 trainer/main.py ...` underneath.

Checked: one world of 2 processes, every test image counted once (the test split is odd, so a shard is padded),
and a run stopped on both machines and resumed there equals the uninterrupted one (the helpers and tolerance of
tests/test_distributed.py). The uninterrupted run is launched by docs/slurm/multinode.sbatch, under stand-ins
for srun and scontrol that run its per-node command once per node on this host."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runs import COMPARED, N_TEST, REPO, assert_same_metrics, flags, recount_accuracy, sub_env
from test_distributed import STOP_AT_EPOCH_3
from trainer.runfolder import read_metrics

pytestmark = pytest.mark.slow

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CONFIG = REPO / "configs" / "accelerate" / "multi_node.yaml"
EPOCHS = 2
# 256 training images / 2 processes / batch 32 = 4 steps per epoch; the learning rate of the 2-process test
TINY = ("--train-subset", "256", "--lr", "0.2")
STOP_AT_EPOCH_2 = STOP_AT_EPOCH_3.replace("epoch == 3", "epoch == 2").replace("epoch 3", "epoch 2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes; whatever still runs at the timeout is killed with its process group (launchers, workers)."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def launch_two_machines(script: str, argv: list[str], logs: Path, timeout: float = 900) -> list[tuple[int, str]]:
    """`accelerate launch` of `script` once per machine rank, side by side; (exit code, output) of each."""
    port, logs = free_port(), Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in (0, 1):
        cmd = [ACCELERATE, "launch", "--config_file", str(CONFIG), "--num_machines", "2", "--machine_rank",
               str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "--num_processes", "2", script, *argv]
        with open(logs / f"machine{rank}.log", "w") as out:  # a file, not a pipe: neither launcher can block on it
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=sub_env(OMP_NUM_THREADS="1"), stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    codes = wait_all(procs, timeout)
    return [(code, (logs / f"machine{rank}.log").read_text()) for rank, code in enumerate(codes)]


# Stand-ins for SLURM on one host: srun runs its command once per node of the job, SLURM_NODEID 0 .. N-1, and
# fails when one of them fails; `scontrol show hostnames` names this host as the job's first node.
SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node "$@" > "$LOGS/machine$node.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
SCONTROL = "#!/bin/bash\necho 127.0.0.1\n"


def sbatch_two_machines(trainer_flags: list[str], out: Path, name: str, work: Path,
                        timeout: float = 900) -> list[tuple[int, str]]:
    """docs/slurm/multinode.sbatch as a 2-node job of 1 GPU per node, under the stand-ins; (exit code of the
    job, output of each machine)."""
    stubs, logs = work / "bin", work / "logs"
    stubs.mkdir(parents=True)
    logs.mkdir()
    for tool, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / tool).write_text(text)
        (stubs / tool).chmod(0o755)
    env = sub_env(OMP_NUM_THREADS="1", PATH=f"{stubs}:{os.environ['PATH']}", LOGS=str(logs),
                  SLURM_SUBMIT_DIR=str(REPO), SLURM_NNODES="2", SLURM_JOB_ID="0", SLURM_JOB_NODELIST="node[0-1]",
                  GPUS_PER_NODE="1", PORT=str(free_port()), VENV=str(Path(sys.executable).parents[1]),
                  OUT=str(out), RUN_NAME=name, ARGS=" ".join(trainer_flags))
    with open(work / "job.log", "w") as job:
        (code,) = wait_all([subprocess.Popen(["bash", str(REPO / "docs" / "slurm" / "multinode.sbatch")], env=env,
                                             cwd=work, stdout=job, stderr=subprocess.STDOUT,
                                             start_new_session=True)], timeout)
    return [(code, (logs / f"machine{rank}.log").read_text() if (logs / f"machine{rank}.log").is_file()
             else (work / "job.log").read_text()) for rank in (0, 1)]


def trainer_flags(data, *extra: str) -> list[str]:
    """`runs.flags` without --out and --name (the batch script sets them)."""
    argv = flags(data, Path("OUT"), "NAME", *extra, epochs=EPOCHS)
    i = argv.index("--out")
    assert argv[i:i + 4] == ["--out", "OUT", "--name", "NAME"]
    return argv[:i] + argv[i + 4:]


@pytest.fixture(scope="module")
def two_machine_run(data, tmp_path_factory) -> Path:
    """The uninterrupted run, launched as the SLURM batch script launches it."""
    out = tmp_path_factory.mktemp("multinode")
    for code, text in sbatch_two_machines(trainer_flags(data, *TINY), out, "two", out / "job"):
        assert code == 0, text[-4000:]
    return out / "two"


def test_two_machines_train_as_one_world_of_two_processes(two_machine_run):
    log = (two_machine_run / "train.log").read_text()
    devices = [line for line in log.splitlines() if "devices:" in line]
    assert len(devices) == 1 and "devices: 2 x CPU, DistributedType.MULTI_CPU" in devices[0]
    assert "global batch of 64 (32 x 2 processes" in log
    assert log.count("done: final test accuracy") == 1  # one main process for both machines
    ckpt = two_machine_run / "checkpoints" / (two_machine_run / "checkpoints" / "latest").read_text().strip()
    assert json.loads((ckpt / "state.json").read_text())["num_processes"] == 2
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert [r["epoch"] for r in read_metrics(two_machine_run)] == list(range(1, EPOCHS + 1))


def test_two_machines_count_every_test_image_once(two_machine_run, data):
    n = 3 * N_TEST
    assert n % 2 == 1  # precondition: the two shards are uneven, so the last batch is padded
    rows = read_metrics(two_machine_run)
    assert all(r["test_images"] == n == len(data.test_labels) for r in rows)
    assert recount_accuracy(two_machine_run, data.test_labels) == pytest.approx(rows[-1]["test_acc"], abs=1e-9)


def test_resume_on_both_machines_equals_the_uninterrupted_run(two_machine_run, data, tmp_path):
    script = tmp_path / "stop_at_2.py"
    script.write_text(STOP_AT_EPOCH_2.format(repo=str(REPO)))
    run = tmp_path / "two-b"
    results = launch_two_machines(str(script), flags(data, tmp_path, "two-b", *TINY, epochs=EPOCHS), tmp_path / "a")
    assert all(code != 0 for code, _ in results)  # both machines stop
    assert "interrupted (SIGINT) during epoch 2" in results[0][1]
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0001"

    resume = ["--resume", str(run), "--workers", "0", "--wandb-mode", "disabled"]
    results = launch_two_machines("trainer/main.py", resume, tmp_path / "b")
    for code, text in results:
        assert code == 0, text[-4000:]
    assert "resumed from epoch 1 of 2" in results[0][1]
    assert_same_metrics(read_metrics(run), read_metrics(two_machine_run), keys=COMPARED)
