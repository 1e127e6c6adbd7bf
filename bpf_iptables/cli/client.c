/* The installed bpf-iptables, bpf-iptables-save and bpf-iptables-restore:
 * the C twin of cli/client.py (read its docstring: the protocol is there).
 *
 * Why C: a served command's work is done in the namespace's command server
 * (datapath/server.py); the client only forwards argv, environment and its
 * descriptors and waits. Starting Python for that costs more than the
 * server's whole share of a one-rule update at 10k rules. This binary
 * starts like iptables does.
 *
 * It never runs a command itself: whenever the server did not answer
 * E<status>, it execs the Python CLI (the "python" beside this binary: the
 * venv's) with CLIENT_ENV set, which client.forward() pops (so it reaches
 * no process the command starts):
 *   CLIENT_LOCAL   nothing was done: run the command here, do not ask the
 *                  server again (no server, busy, refused, not sent, "F",
 *                  BPF_IPTABLES_SERVER=off);
 *   a request id   the server ended after our request was sent: client.py
 *                  decides, under the lock, whether it was applied (stdin
 *                  rewound here when it is seekable).
 * One binary for the three commands: the program follows basename(argv[0]).
 * The constants below are cross-checked with client.py's by
 * tests/test_cli_client_c.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* client.py's SOCKET_NAME without its leading NUL (an abstract name) */
#define SOCKET_NAME "bpf-iptables"
#define RUN_DIR_ENV "BPF_IPTABLES_RUN_DIR"
#define SERVER_ENV "BPF_IPTABLES_SERVER"
#define SERVER_OFF "off"
#define READY_WAIT_MS 500
#define ENV_PREFIXES "BPF_IPTABLES_", "XTABLES_", "LC_", "LANG"
#define CLIENT_ENV "BPF_IPTABLES_CLIENT"
#define CLIENT_LOCAL "local"
#define ENTRY_MODULE "bpf_iptables.cli.entry"
/* installed name -> client.py's PROGS */
#define PROG_IPTABLES "bpf-iptables", "iptables"
#define PROG_SAVE "bpf-iptables-save", "save"
#define PROG_RESTORE "bpf-iptables-restore", "restore"
#define MAX_MESSAGE (1 << 16)   /* client.py's MAX_MESSAGE: the server's recvmsg buffer */

static const char *const env_prefixes[] = {ENV_PREFIXES};
static const char *const programs[][2] = {{PROG_IPTABLES}, {PROG_SAVE}, {PROG_RESTORE}};

extern char **environ;

/* Run the command in Python: never returns. */
static void run_python(const char *prog, int argc, char **argv, const char *how)
{
	char exe[PATH_MAX], python[PATH_MAX + 8];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		fprintf(stderr, "bpf-iptables: cannot find the Python interpreter: "
			"/proc/self/exe: %s\n", strerror(errno));
		exit(1);
	}
	exe[n] = '\0';
	char *slash = strrchr(exe, '/');
	*(slash ? slash + 1 : exe) = '\0';
	snprintf(python, sizeof(python), "%spython", exe);
	if (setenv(CLIENT_ENV, how, 1) != 0) {
		fprintf(stderr, "bpf-iptables: setenv: %s\n", strerror(errno));
		exit(1);
	}
	/* python -P: the working directory is not put on sys.path (the
	 * installed scripts never had it there either) */
	char **args = calloc((size_t)argc + 5, sizeof(char *));
	if (!args) {
		fprintf(stderr, "bpf-iptables: out of memory\n");
		exit(1);
	}
	int k = 0;
	args[k++] = python;
	args[k++] = "-P";
	args[k++] = "-m";
	args[k++] = ENTRY_MODULE;
	args[k++] = (char *)prog;
	for (int i = 1; i < argc; i++)
		args[k++] = argv[i];
	args[k] = NULL;
	execv(python, args);
	fprintf(stderr, "bpf-iptables: cannot run %s: %s\n", python, strerror(errno));
	exit(1);
}

static int forwarded(const char *entry)
{
	if (!strchr(entry, '='))
		return 0;
	for (size_t i = 0; i < sizeof(env_prefixes) / sizeof(*env_prefixes); i++)
		if (strncmp(entry, env_prefixes[i], strlen(env_prefixes[i])) == 0)
			return 1;
	return 0;
}

/* client.encode(): NUL-separated prog, id, umask, argc, argv, KEY=VALUE */
static size_t encode(char *buf, size_t cap, const char *prog, const char *request_id,
		     int argc, char **argv)
{
	mode_t mask = umask(0);
	umask(mask);
	size_t len = 0;
	int over = 0;
#define PUT(s)                                                          \
	do {                                                            \
		size_t l_ = strlen(s);                                  \
		if (len && !over) {                                     \
			if (len + 1 > cap) over = 1; else buf[len++] = '\0'; \
		}                                                       \
		if (!over && len + l_ <= cap) {                         \
			memcpy(buf + len, s, l_);                       \
			len += l_;                                      \
		} else {                                                \
			over = 1;                                       \
		}                                                       \
	} while (0)
	char num[32];
	PUT(prog);
	PUT(request_id);
	snprintf(num, sizeof(num), "%u", (unsigned)mask);
	PUT(num);
	snprintf(num, sizeof(num), "%d", argc - 1);
	PUT(num);
	for (int i = 1; i < argc; i++)
		PUT(argv[i]);
	for (char **e = environ; *e; e++)
		if (forwarded(*e))
			PUT(*e);
#undef PUT
	return over ? 0 : len;
}

static void set_timeout(int fd, int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/* a unix connect() waits for a full backlog as long as SO_SNDTIMEO */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* client._connect(): a socket the root server said R on, or -1 */
static int connect_server(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	const char *run = getenv(RUN_DIR_ENV);
	int n;
	if (run && *run)
		n = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "%s:%s",
			     SOCKET_NAME, run);
	else
		n = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "%s", SOCKET_NAME);
	if (n < 0 || (size_t)n >= sizeof(addr.sun_path) - 1)
		return -1;   /* too long for a socket name: Python's connect fails too */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	set_timeout(fd, READY_WAIT_MS);
	socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	if (connect(fd, (struct sockaddr *)&addr, alen) != 0)
		goto fail;   /* no server (ECONNREFUSED), or busy */
	/* only root's server is trusted with a root command (anyone in the
	 * namespace could bind the name first) */
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.uid != 0)
		goto fail;
	char ready;
	ssize_t got;
	do
		got = recv(fd, &ready, 1, 0);
	while (got < 0 && errno == EINTR);
	if (got != 1 || ready != 'R')
		goto fail;   /* busy or hung: not waited for longer */
	set_timeout(fd, 0);   /* from here on the command may wait for the lock (-w) */
	return fd;
fail:
	close(fd);
	return -1;
}

static const char *program(const char *argv0)
{
	const char *base = strrchr(argv0, '/');
	base = base ? base + 1 : argv0;
	for (size_t i = 0; i < sizeof(programs) / sizeof(*programs); i++)
		if (strcmp(base, programs[i][0]) == 0)
			return programs[i][1];
	fprintf(stderr, "bpf-iptables client: unknown program name '%s' (install this binary "
		"as bpf-iptables, bpf-iptables-save or bpf-iptables-restore)\n", base);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *prog = program(argc > 0 ? argv[0] : "");
	/* private between this binary and the Python it execs */
	unsetenv(CLIENT_ENV);
	const char *server = getenv(SERVER_ENV);
	if (server && strcmp(server, SERVER_OFF) == 0)
		run_python(prog, argc, argv, CLIENT_LOCAL);
	int sock = connect_server();
	if (sock < 0)
		run_python(prog, argc, argv, CLIENT_LOCAL);

	unsigned char random[6];
	char request_id[48];
	if (getrandom(random, sizeof(random), 0) != (ssize_t)sizeof(random))
		run_python(prog, argc, argv, CLIENT_LOCAL);
	int at = snprintf(request_id, sizeof(request_id), "%d.", (int)getpid());
	for (size_t i = 0; i < sizeof(random); i++)
		at += snprintf(request_id + at, sizeof(request_id) - at, "%02x", random[i]);

	static char message[MAX_MESSAGE];
	size_t len = encode(message, sizeof(message), prog, request_id, argc, argv);
	if (len == 0)   /* too long for the server: run it here */
		run_python(prog, argc, argv, CLIENT_LOCAL);
	off_t stdin_at = lseek(0, 0, SEEK_CUR);   /* the server reads our stdin */
	int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cwd < 0)
		run_python(prog, argc, argv, CLIENT_LOCAL);

	int fds[4] = {0, 1, 2, cwd};
	union {
		char buf[CMSG_SPACE(sizeof(fds))];
		struct cmsghdr align;
	} control;
	memset(&control, 0, sizeof(control));
	struct iovec iov = {.iov_base = message, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
	ssize_t sent;
	do   /* MSG_NOSIGNAL: a server gone before this is a fallback, not a SIGPIPE */
		sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	close(cwd);
	if (sent < 0) {   /* not sent (e.g. a closed stdout: EBADF): nothing was done */
		close(sock);
		run_python(prog, argc, argv, CLIENT_LOCAL);
	}

	char answer[17];
	ssize_t got;
	do
		got = recv(sock, answer, sizeof(answer) - 1, 0);
	while (got < 0 && errno == EINTR);
	close(sock);
	if (got > 1 && answer[0] == 'E') {
		answer[got] = '\0';
		char *end;
		long status = strtol(answer + 1, &end, 10);
		if (*end == '\0')
			return (int)(status & 0xFF);
	}
	if (got == 1 && answer[0] == 'F')
		run_python(prog, argc, argv, CLIENT_LOCAL);
	/* the server ended with our request: client.py decides whether it was
	 * applied; a file on stdin is read again from where it was */
	if (stdin_at >= 0)
		lseek(0, stdin_at, SEEK_SET);
	run_python(prog, argc, argv, request_id);
}
