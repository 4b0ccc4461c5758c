"""Joining a `jax.distributed` job: from command-line flags or from a cluster scheduler's environment.

Several processes (one per GPU, one per host, or several CPU processes on one machine) run the same
`mdflow run/check CONFIG`; every process solves its devices' chunks and process 0 writes the store
(`_execution.run.execute`). The job must be joined before JAX creates its backend (before the first array), so
the CLI calls `initialize` from `_setup_jax`.

- Flags: `--coordinator HOST:PORT --num-processes N --process-id I` (all three, or none).
- Environment: inside a SLURM job step with more than one task (`srun`: `SLURM_NTASKS > 1` and
  `SLURM_STEP_NODELIST` set), JAX's own cluster detection reads the coordinator (first node of the
  step, a port derived from the job id), the process count and id (`SLURM_NTASKS`, `SLURM_PROCID`).
  `JAX_COORDINATOR_ADDRESS` with the flags' count and id also works.

On CPU the processes exchange results through JAX's CPU collectives (gloo over TCP). With a
loopback coordinator (`127.0.0.1`, `localhost`) the job is one machine: the coordinator binds
loopback only and each process gets `cores // N` host devices (unless `XLA_FLAGS` already sets a
count), so nothing leaves the machine and the cores are not oversubscribed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os

from .._errors import InputError

LOOPBACK_NAMES = ("localhost",)


@dataclasses.dataclass(frozen=True)
class DistributedJob:
    """Where to join a `jax.distributed` job; `None` fields are left to JAX's cluster detection."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    init_timeout_s: int = 300

    @property
    def host(self) -> str | None:
        return None if self.coordinator is None else self.coordinator.rsplit(":", 1)[0].strip("[]")

    @property
    def on_loopback(self) -> bool:
        """Every process on this machine: the coordinator is a loopback address."""
        if self.host is None:
            return False
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _check_coordinator(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--coordinator={value!r}: expected HOST:PORT (e.g. 127.0.0.1:12345)")
    return value


def job_from_flags(coordinator: str | None, num_processes: int | None, process_id: int | None, *,
                   init_timeout_s: int = 300, environ=None) -> DistributedJob | None:
    """The job named by the flags, else by the scheduler's environment (`None`: a single process).

    Raises `InputError` (one line) for incomplete or inconsistent flags, before anything starts.
    """
    environ = os.environ if environ is None else environ
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise InputError(f"{', '.join(missing)}: needed with {', '.join(k for k in given if k not in missing)}"
                             " (a distributed job needs all three)")
        _check_coordinator(coordinator)
        if num_processes < 1:
            raise InputError(f"--num-processes={num_processes}: must be >= 1")
        if not 0 <= process_id < num_processes:
            raise InputError(f"--process-id={process_id}: must be in [0, {num_processes})")
        if init_timeout_s < 1:
            raise InputError(f"--init-timeout={init_timeout_s}: must be >= 1 second")
        return DistributedJob(coordinator, num_processes, process_id, init_timeout_s)
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in environ:
        return DistributedJob(None, None, None, init_timeout_s)  # JAX's SLURM detection fills it in
    return None


def local_device_count(job: DistributedJob | None, cores: int | None = None) -> int | None:
    """Host devices per process for `use_cpu_cores`: the cores split between the processes of a
    one-machine (loopback) job, else `None` (one per core)."""
    if job is None or not job.on_loopback or job.num_processes is None:
        return None
    cores = cores or os.cpu_count() or 1
    return max(1, cores // job.num_processes)


class CoordinatorError(Exception):
    """The job could not be joined within `--init-timeout`: the coordinator was not reached, or not
    every process joined it. The CLI exits with `EXIT_NO_COORDINATOR` (5) and one line."""


def _rendezvous(job: DistributedJob) -> None:
    """Check, before `jax.distributed.initialize`, that the job can form within its timeout: process 0
    listens on the coordinator's port until every other process has connected once; every other
    process connects to it (retrying until the timeout). Why: when the coordinator or a peer never
    comes, `initialize` ends the process with SIGABRT and a C++ stack dump, after the timeout; this
    says so in one line instead (`CoordinatorError`). Process 0 then closes the port for JAX's own
    coordination service, which the others reach with their usual retries."""
    import socket
    import time

    host, port = job.host, int(job.coordinator.rsplit(":", 1)[1])
    deadline = time.monotonic() + job.init_timeout_s
    if job.process_id == 0:
        bind = host if job.on_loopback else ""
        try:
            server = socket.create_server((bind, port), reuse_port=False)
        except OSError as exc:
            raise InputError(f"--coordinator={job.coordinator!r}: process 0 cannot listen on port {port} "
                             f"({exc.strerror or exc})") from None
        joined = 0
        with server:
            while joined < job.num_processes - 1:
                server.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    peer, _ = server.accept()
                except (TimeoutError, socket.timeout):
                    raise CoordinatorError(
                        f"--coordinator={job.coordinator!r}: {joined} of the {job.num_processes - 1} other "
                        f"process(es) joined within --init-timeout={job.init_timeout_s} s") from None
                with peer:
                    peer.settimeout(1.0)
                    try:
                        peer.recv(1)  # until the peer closes: the TIME_WAIT stays on its side
                    except OSError:
                        pass
                joined += 1
        return
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.01, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise CoordinatorError(
                    f"--coordinator={job.coordinator!r}: not reached within --init-timeout={job.init_timeout_s} s "
                    f"({exc.strerror or exc}); is process 0 running?") from None
            time.sleep(0.1)


def initialize(job: DistributedJob) -> None:
    """`jax.distributed.initialize` for `job` (before any array exists), after `_rendezvous` when the
    flags name the job. A loopback coordinator binds loopback only (JAX's default binds every
    interface)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    if job.coordinator is None:  # scheduler environment: let JAX detect everything
        jax.distributed.initialize(initialization_timeout=job.init_timeout_s)
        return
    _rendezvous(job)
    kwargs = {"coordinator_bind_address": job.coordinator} if job.on_loopback else {}
    jax.distributed.initialize(coordinator_address=job.coordinator, num_processes=job.num_processes,
                               process_id=job.process_id, initialization_timeout=job.init_timeout_s, **kwargs)
    if job.on_loopback:
        _gloo_on_loopback()


def _gloo_on_loopback() -> None:
    """Make the CPU backend's gloo collectives listen on 127.0.0.1 (by default gloo binds the address
    the machine's hostname resolves to, which may be a network interface). Uses JAX's backend
    factory hook; if that hook is missing (another JAX version) the default stays."""
    try:
        from jax._src import distributed, xla_bridge
        from jax._src.lib import _jax

        def factory():
            collectives = _jax.make_gloo_tcp_collectives(distributed.global_state.client, hostname="127.0.0.1")
            return xla_bridge.make_cpu_client(collectives=collectives)

        xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
    except (ImportError, AttributeError, TypeError):
        pass
