/**
 * The command lines the SSH launcher runs on a node, built as plain strings
 * so they can be checked without a connection: a rank's wrapper and
 * environment (the token kept off the command line), the free-port probe,
 * the process-group kill, and the host key algorithms offered in the
 * handshake. ssh.ts holds the connections that run them.
 */
import assert from "node:assert/strict";
import type { ServerHostKeyAlgorithm } from "ssh2";
import { InvalidArgumentError, type NodeSpec } from "../domain/index.js";
import type { LaunchRequest } from "./types.js";

/** First stdout line of a rank: the pid (and process group) of the worker on its node. */
export const PID_LINE = /^CLIPFLEET_PID (\d+)$/;

/**
 * Run by the node's interpreter before the worker: the rank's environment
 * from the first line of stdin (JSON, read a byte at a time so the token line
 * after it stays for the worker), own session and process group, gloo bound
 * to the interface holding the node's address (unless GLOO_SOCKET_IFNAME is
 * set: hosts whose name resolves to 127.0.1.1 would otherwise offer peers a
 * loopback address), the pid line, then the worker (`clipfleet_worker
 * spare` when the word after the address is `spare`: a warm spare, whose
 * stdin stays open for its hand-over line). For task command the
 * environment names the program (CLIPFLEET_COMMAND, JSON argv) and its
 * directory: the wrapper reads the token line itself (the user's program
 * knows nothing of stdin), puts it in the environment the program's clipfleet
 * API reads, and runs the program in the directory, `python`/`python3` as
 * this interpreter.
 */
export const WRAPPER = [
  "import json, os, socket, sys",
  "line = b''",
  "while not line.endswith(b'\\n'):",
  "    c = os.read(0, 1)",
  "    if not c:",
  "        break",
  "    line += c",
  "os.environ.update(json.loads(line or b'{}'))",
  "try:",
  "    os.setsid()",
  "except OSError:",
  "    pass",
  'if "GLOO_SOCKET_IFNAME" not in os.environ:',
  "    try:",
  "        import fcntl, struct",
  "        want = socket.gethostbyname(sys.argv[1])",
  "        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
  "        for _, name in socket.if_nameindex():",
  "            try:",
  '                got = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))[20:24])',
  "            except OSError:",
  "                continue",
  '            if got == want and name != "lo":',
  '                os.environ["GLOO_SOCKET_IFNAME"] = name',
  "                break",
  "    except (OSError, ImportError):",
  "        pass",
  'print("CLIPFLEET_PID", os.getpid(), flush=True)',
  'command = os.environ.pop("CLIPFLEET_COMMAND", None)',
  "if command is None:",
  '    os.execv(sys.executable, [sys.executable, "-m", "clipfleet_worker", "spare" if sys.argv[2:] == ["spare"] else "run"])',
  "argv = json.loads(command)",
  'token = b""',
  "while not token.endswith(b'\\n'):",
  "    c = os.read(0, 1)",
  "    if not c:",
  "        break",
  "    token += c",
  'os.environ["CLIPFLEET_TOKEN"] = token.decode().strip()',
  'os.environ.pop("CLIPFLEET_TOKEN_STDIN", None)',
  'os.chdir(os.environ.pop("CLIPFLEET_COMMAND_CWD"))',
  'if argv[0] in ("python", "python3"):',
  "    argv[0] = sys.executable",
  "try:",
  "    os.execvp(argv[0], argv)",
  "except OSError as err:",
  '    print(f"clipfleet: cannot run {argv[0]}: {err}", file=sys.stderr, flush=True)',
  "    os._exit(127)",
].join("\n");

/** Binds a port on the node's address (any address if that is not local) and prints it. */
export const FREE_PORT = [
  "import socket, sys",
  "try:",
  "    info = socket.getaddrinfo(sys.argv[1], 0, type=socket.SOCK_STREAM)[0]",
  "    s = socket.socket(info[0], socket.SOCK_STREAM)",
  "    s.bind(info[4])",
  "except OSError:",
  "    s = socket.socket()",
  '    s.bind(("", 0))',
  "print(s.getsockname()[1])",
].join("\n");

/** The command that prints a free TCP port on the node (see FREE_PORT). */
export function freePortCommand(node: NodeSpec): string {
  return `${shellQuote(node.python ?? "python3")} -c ${shellQuote(FREE_PORT)} ${shellQuote(node.address)}`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Quotes one word for a POSIX shell (the remote login shell runs the command line). */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The remote command line of a rank: the workdir, the interpreter and the
 * wrapper, nothing of the rank's environment or secrets (`ps` on the node
 * shows a command line to every user): those go to the channel's stdin
 * (workerStdin).
 */
export function workerCommand(req: Pick<LaunchRequest, "python" | "workdir" | "env" | "secrets" | "node">): string {
  return remoteCommand(req, "run");
}

/**
 * The remote command line of a warm spare (spares.ts): the rank's wrapper
 * running `clipfleet_worker spare`, its environment (no token) on the first
 * stdin line (`workerStdin` with no secrets); the rank's environment and
 * token come later, as the hand-over line on the same stdin.
 */
export function spareCommand(req: Pick<LaunchRequest, "python" | "workdir" | "env" | "node">): string {
  return remoteCommand({ ...req, secrets: {} }, "spare");
}

function remoteCommand(req: Pick<LaunchRequest, "python" | "workdir" | "env" | "secrets" | "node">, mode: "run" | "spare"): string {
  for (const k of Object.keys(req.env)) {
    if (!ENV_NAME.test(k)) throw new InvalidArgumentError(`worker.env: ${JSON.stringify(k)} is not an environment variable name`);
  }
  // A rank reads its token from stdin after the environment line; a spare gets it in its hand-over.
  const prefix = mode === "run" ? "env CLIPFLEET_TOKEN_STDIN=1 " : "";
  const cmd = `cd ${shellQuote(req.workdir)} && exec ${prefix}${shellQuote(req.python)} -c ${shellQuote(WRAPPER)} ${shellQuote(req.node.address)}${mode === "spare" ? " spare" : ""}`;
  for (const secret of Object.values(req.secrets)) assert(!cmd.includes(secret), "a secret would appear on the remote command line");
  return cmd;
}

/**
 * The stdin of a rank: its environment as one JSON line (read by the
 * wrapper; PYTHONPATH led by the workdir), then its secrets, one line each,
 * in the order the worker reads them (the token).
 */
export function workerStdin(req: Pick<LaunchRequest, "workdir" | "env" | "secrets" | "command">): string {
  const keys = Object.keys(req.secrets);
  assert(keys.every((k) => k === "CLIPFLEET_TOKEN"), `only CLIPFLEET_TOKEN can be passed over stdin, got ${keys.join(", ")}`);
  const env: Record<string, string> = { ...req.env, PYTHONPATH: req.env.PYTHONPATH ? `${req.workdir}:${req.env.PYTHONPATH}` : req.workdir };
  if (req.command) {
    env.CLIPFLEET_COMMAND = JSON.stringify(req.command.argv);
    env.CLIPFLEET_COMMAND_CWD = req.command.cwd;
  }
  return `${JSON.stringify(env)}\n${req.secrets.CLIPFLEET_TOKEN === undefined ? "" : `${req.secrets.CLIPFLEET_TOKEN}\n`}`;
}

/** `kill -s TERM -- -PGID`: the portable spelling (dash's kill rejects `-TERM --`). */
export function killCommand(pgid: number, sig: NodeJS.Signals): string {
  assert(Number.isInteger(pgid) && pgid > 1, `bad process group ${pgid}`);
  return `kill -s ${sig.replace(/^SIG/, "")} -- -${pgid}`;
}

/** Host key algorithms ssh2 supports, in OpenSSH's order of preference. */
const HOST_KEY_ALGORITHMS: readonly ServerHostKeyAlgorithm[] = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "rsa-sha2-512",
  "rsa-sha2-256",
  "ssh-rsa",
];

/**
 * Algorithms for the handshake, those of key types already known for the
 * host first (as OpenSSH orders them), so a host with several keys offers
 * the one on file.
 */
export function hostKeyAlgorithms(knownTypes: readonly string[]): ServerHostKeyAlgorithm[] {
  const preferred = HOST_KEY_ALGORITHMS.filter((a) => knownTypes.some((t) => t === a || (t === "ssh-rsa" && a.startsWith("rsa-sha2-"))));
  return [...preferred, ...HOST_KEY_ALGORITHMS.filter((a) => !preferred.includes(a))];
}
