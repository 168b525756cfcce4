/*
 * latencyfs: a latency-injecting passthrough FUSE filesystem.
 *
 * It mirrors SOURCE at MOUNTPOINT and sleeps a configurable delay before
 * answering every request a caller waits on, so that a local directory
 * behaves like a network filesystem (NFS, GPFS, Lustre) on which every
 * metadata operation is a round trip to a server. Every request is counted in
 * a shared-memory stats file, so tests can assert exact round-trip counts.
 *
 * It speaks the raw FUSE kernel protocol on /dev/fuse and calls mount(2)
 * itself, so it needs root, /dev/fuse and libc only: no libfuse, no
 * fusermount. One file, built with
 *
 *     gcc -O2 -Wall -Wextra -pthread -o latencyfs latencyfs.c
 *
 * Usage: latencyfs SOURCE MOUNTPOINT [--delay-us N] [--entry-timeout SEC]
 *            [--attr-timeout SEC] [--threads N] [--stats FILE]
 *            [--no-default-permissions] [--exit-with-parent] [--trace]
 *
 * Design notes (the why; see README.md for the what):
 *  - Inodes are nodes keyed by (st_dev, st_ino) that remember their parent
 *    and name; paths are rebuilt per request (see "Inodes" below for why not
 *    one O_PATH fd per inode). The node id given to the kernel is the node's
 *    address; FORGET/BATCH_FORGET drop the lookup count and free the node
 *    when neither the kernel, an open handle nor a child refers to it.
 *  - A pool of worker threads reads the one /dev/fuse fd (the kernel hands
 *    each read exactly one request); a thread about to sleep hands the reading
 *    to another, so delays of different requests overlap (see pool_handoff).
 *  - The delay is read from the stats file on every request, so a client may
 *    change it while the filesystem is mounted.
 */
#define _GNU_SOURCE
#include <linux/fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Shared-memory stats: the layout is part of the interface (__init__.py).   */

#define STATS_MAGIC 0x3153465954414cULL /* "LATYFS1" read as little-endian */
#define STATS_VERSION 1
#define STATS_NOPS 64 /* ops[opcode] for opcode < 64; others go to other_ops */

struct lfs_stats {
	uint64_t magic;                   /* STATS_MAGIC, written last */
	uint64_t version;                 /* STATS_VERSION */
	_Atomic uint64_t delay_us;        /* clients may write this at any time */
	_Atomic uint64_t in_flight;       /* requests read but not yet answered */
	_Atomic uint64_t max_in_flight;   /* high-water mark; clients may zero it */
	_Atomic uint64_t read_bytes;      /* bytes returned by READ */
	_Atomic uint64_t write_bytes;     /* bytes written by WRITE */
	_Atomic uint64_t nodes;           /* live inodes (lookup count > 0) */
	_Atomic uint64_t handles;         /* open file and directory handles */
	_Atomic uint64_t other_ops;       /* requests with opcode >= STATS_NOPS */
	uint64_t pid;                     /* server pid */
	uint64_t nops;                    /* STATS_NOPS */
	uint64_t reserved[4];
	_Atomic uint64_t ops[STATS_NOPS]; /* requests received, by opcode */
};

_Static_assert(sizeof(struct lfs_stats) == 16 * 8 + STATS_NOPS * 8, "stats layout");

/* ------------------------------------------------------------------------ */
/* Configuration and global state.                                          */

#define MAX_WRITE (128 * 1024)     /* = 32 pages, the kernel's default max_pages */
#define MAX_READAHEAD (128 * 1024) /* the kernel's default readahead window */
/* A request is a header, an op struct and at most MAX_WRITE bytes of data. */
#define IN_BUF_SIZE (MAX_WRITE + 4096)
#define OUT_BUF_SIZE (MAX_WRITE + 4096)

static int fuse_fd = -1;
static const char *mountpoint;
static struct lfs_stats *stats;
static uint64_t entry_sec, attr_sec;
static uint32_t entry_nsec, attr_nsec;
static bool negative_cache; /* cache ENOENT for entry-timeout, like NFS lookupcache */
static bool trace;
static pthread_t main_thread;

static double parse_seconds(const char *opt, const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || !isfinite(v) || v < 0 || v > 1e9) {
		fprintf(stderr, "latencyfs: %s wants seconds >= 0, got '%s'\n", opt, s);
		exit(2);
	}
	return v;
}

static long parse_int(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi) {
		fprintf(stderr, "latencyfs: %s wants an integer in [%ld, %ld], got '%s'\n", opt, lo,
			hi, s);
		exit(2);
	}
	return v;
}

static void split_seconds(double v, uint64_t *sec, uint32_t *nsec)
{
	*sec = (uint64_t)v;
	double frac = (v - (double)*sec) * 1e9;
	*nsec = frac >= 999999999.0 ? 999999999u : (uint32_t)frac;
}

/* ------------------------------------------------------------------------ */
/* Inodes.                                                                   */

/*
 * A node is a file the kernel knows, named by the directory node it was last
 * seen in and its name there; its path (relative to SOURCE) is rebuilt from
 * those on every request. No fd is held per node: the kernel may cache far
 * more inodes than a process may hold fds (RLIMIT_NOFILE is 20000 in some
 * containers and cannot be raised without CAP_SYS_RESOURCE).
 *
 * A path may come to name another file (the old one unlinked and its inode
 * number reused), so every request on a node checks (st_dev, st_ino) and
 * answers ESTALE on a mismatch, as an NFS server does; the VFS then redoes the
 * path walk with fresh LOOKUPs. Unlinks and renames through the mount update
 * the tree at once (a removed node is marked dead and unhashed, so a new file
 * that reuses its inode number gets a new node id). While a node is open it
 * pins an fd, so open-but-unlinked files keep working.
 */
struct node {
	struct node *hnext;  /* (dev, ino) hash chain, while hashed */
	struct node *parent; /* the directory it was last seen in (holds a child ref) */
	char *name;          /* its name there */
	dev_t dev;
	ino_t ino;
	uint64_t nlookup;  /* kernel references, from LOOKUP-like replies */
	uint64_t children; /* nodes whose parent this is */
	uint64_t nopen;    /* open file and directory handles */
	int pin_fd;        /* while nopen > 0: an fd on the file itself */
	bool hashed;
	bool dead; /* removed through the mount: its name is not its own any more */
};

static struct node root_node; /* FUSE_ROOT_ID; never hashed or freed */
static int root_fd = -1;      /* SOURCE; every path is relative to it */
/* Guards every node's fields and the hash; held only for short, local work. */
static pthread_mutex_t tree_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **buckets;
static size_t nbuckets, nhashed;

static size_t node_hash(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ULL ^ (uint64_t)dev;
	return (size_t)(h ^ (h >> 29)) & (nbuckets - 1);
}

static void nodes_grow(void)
{
	size_t old = nbuckets;
	struct node **ob = buckets;
	struct node **nb = calloc(old * 2, sizeof(*nb));
	if (!nb)
		return; /* keep the longer chains; still correct */
	buckets = nb;
	nbuckets = old * 2;
	for (size_t i = 0; i < old; i++) {
		for (struct node *n = ob[i], *next; n; n = next) {
			next = n->hnext;
			size_t h = node_hash(n->dev, n->ino);
			n->hnext = buckets[h];
			buckets[h] = n;
		}
	}
	free(ob);
}

static struct node *node_find(dev_t dev, ino_t ino)
{
	for (struct node *n = buckets[node_hash(dev, ino)]; n; n = n->hnext) {
		if (n->ino == ino && n->dev == dev)
			return n;
	}
	return NULL;
}

static void node_unhash(struct node *n)
{
	if (!n->hashed)
		return;
	struct node **pp = &buckets[node_hash(n->dev, n->ino)];
	while (*pp != n)
		pp = &(*pp)->hnext;
	*pp = n->hnext;
	n->hashed = false;
	nhashed--;
}

/* A node the kernel removed from the tree (unlink, rmdir, overwritten). */
static void node_kill(struct node *n)
{
	node_unhash(n);
	n->dead = true;
}

/* Free n, then each ancestor that nothing refers to any more. */
static void node_free_unused(struct node *n)
{
	while (n && n != &root_node && !n->nlookup && !n->children && !n->nopen) {
		struct node *parent = n->parent;
		node_unhash(n);
		free(n->name);
		free(n);
		atomic_fetch_sub_explicit(&stats->nodes, 1, memory_order_relaxed);
		if (parent)
			parent->children--;
		n = parent;
	}
}

static int node_set_name(struct node *n, struct node *parent, const char *name)
{
	if (n->parent == parent && n->name && !strcmp(n->name, name))
		return 0;
	char *copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	struct node *old = n->parent;
	free(n->name);
	n->name = copy;
	n->parent = parent;
	parent->children++;
	if (old) {
		old->children--;
		node_free_unused(old);
	}
	return 0;
}

static struct node *node_of(uint64_t nodeid)
{
	return nodeid == FUSE_ROOT_ID ? &root_node : (struct node *)(uintptr_t)nodeid;
}

static uint64_t nodeid_of(struct node *n)
{
	return n == &root_node ? FUSE_ROOT_ID : (uint64_t)(uintptr_t)n;
}

static bool same_file(const struct node *n, const struct stat *st)
{
	return n->ino == st->st_ino && n->dev == st->st_dev;
}

/*
 * The path of child NAME of n (of n itself if NAME is NULL), relative to
 * root_fd: "a/b/name", or "." for the root. Caller holds tree_lock. A dead
 * node, or one under a dead directory, has no path: -ESTALE. (A cycle, only
 * possible if SOURCE is rearranged behind our back, ends in -ENAMETOOLONG.)
 */
static int build_path(const struct node *n, const char *name, char buf[static PATH_MAX])
{
	size_t pos = PATH_MAX - 1;
	buf[pos] = '\0';
	for (const char *part = name;;) {
		if (part) {
			size_t len = strlen(part);
			size_t sep = pos != PATH_MAX - 1;
			if (len + sep > pos)
				return -ENAMETOOLONG;
			pos -= sep;
			if (sep)
				buf[pos] = '/';
			pos -= len;
			memcpy(buf + pos, part, len);
		}
		if (n == &root_node)
			break;
		if (n->dead || !n->parent)
			return -ESTALE;
		part = n->name;
		n = n->parent;
	}
	if (pos == PATH_MAX - 1)
		buf[--pos] = '.';
	memmove(buf, buf + pos, PATH_MAX - pos);
	return 0;
}

static int locked_path(const struct node *n, const char *name, char buf[static PATH_MAX])
{
	pthread_mutex_lock(&tree_lock);
	int err = build_path(n, name, buf);
	pthread_mutex_unlock(&tree_lock);
	return err;
}

/* "/proc/self/fd/N" reopens or operates on what an fd refers to. */
static void proc_path(char buf[static 40], int fd)
{
	snprintf(buf, 40, "/proc/self/fd/%d", fd);
}

/* A node whose name is gone: reach it through its pinned fd, if open. */
static int node_open_pinned(struct node *n, int flags)
{
	int fd = -ESTALE;
	pthread_mutex_lock(&tree_lock);
	if (n->pin_fd >= 0) {
		char proc[40];
		proc_path(proc, n->pin_fd);
		fd = open(proc, flags | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
	}
	pthread_mutex_unlock(&tree_lock);
	return fd;
}

/* Open node n itself (O_PATH for metadata work), checked to be the same
 * file. Returns an fd or -errno. */
static int node_open(struct node *n, int flags)
{
	char path[PATH_MAX];
	int err = locked_path(n, NULL, path);
	if (!err) {
		int fd = openat(root_fd, path, flags | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			struct stat st;
			if (fstat(fd, &st) == 0 && same_file(n, &st))
				return fd;
			close(fd);
			err = -ESTALE;
		} else {
			err = errno == ENOENT || errno == ENOTDIR ? -ESTALE : -errno;
		}
	}
	return err == -ESTALE ? node_open_pinned(n, flags) : err;
}

static int node_stat(struct node *n, struct stat *st)
{
	char path[PATH_MAX];
	int err = locked_path(n, NULL, path);
	if (!err) {
		if (fstatat(root_fd, path, st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (same_file(n, st))
				return 0;
			err = -ESTALE;
		} else {
			err = errno == ENOENT || errno == ENOTDIR ? -ESTALE : -errno;
		}
	}
	if (err != -ESTALE)
		return err;
	pthread_mutex_lock(&tree_lock);
	if (n->pin_fd >= 0)
		err = fstat(n->pin_fd, st) < 0 ? -errno : 0;
	pthread_mutex_unlock(&tree_lock);
	return err;
}

/* Count an open handle on n; the first pins an fd on the file. */
static void node_pin(struct node *n, int fd)
{
	pthread_mutex_lock(&tree_lock);
	if (n->nopen++ == 0)
		n->pin_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* -1 (EMFILE) just loses the fallback */
	pthread_mutex_unlock(&tree_lock);
	atomic_fetch_add_explicit(&stats->handles, 1, memory_order_relaxed);
}

static void node_unpin(struct node *n)
{
	pthread_mutex_lock(&tree_lock);
	if (n->nopen && --n->nopen == 0) {
		if (n->pin_fd >= 0)
			close(n->pin_fd);
		n->pin_fd = -1;
		node_free_unused(n);
	}
	pthread_mutex_unlock(&tree_lock);
	atomic_fetch_sub_explicit(&stats->handles, 1, memory_order_relaxed);
}

static void node_forget(uint64_t nodeid, uint64_t nlookup)
{
	struct node *n = node_of(nodeid);
	if (n == &root_node)
		return;
	pthread_mutex_lock(&tree_lock);
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	node_free_unused(n);
	pthread_mutex_unlock(&tree_lock);
}

/* The file at st was removed from the tree through the mount. */
static void forget_removed(const struct stat *st)
{
	if (!S_ISDIR(st->st_mode) && st->st_nlink > 1)
		return; /* other links remain; the node's name is re-pointed on LOOKUP */
	pthread_mutex_lock(&tree_lock);
	struct node *n = node_find(st->st_dev, st->st_ino);
	if (n)
		node_kill(n);
	pthread_mutex_unlock(&tree_lock);
}

/* ------------------------------------------------------------------------ */
/* Requests and replies.                                                     */

struct req {
	const struct fuse_in_header *in;
	const char *arg; /* the op's payload, after the header */
	size_t arglen;
	char *out; /* OUT_BUF_SIZE bytes of scratch for READ/READDIR replies */
};

#define NO_REPLY 1 /* handler result: the kernel expects no answer */

static void send_reply(const struct req *r, int error, const struct iovec *iov, int n)
{
	struct iovec v[4];
	struct fuse_out_header oh;
	size_t len = sizeof(oh);
	v[0].iov_base = &oh;
	v[0].iov_len = sizeof(oh);
	for (int i = 0; i < n && !error; i++) {
		v[i + 1] = iov[i];
		len += iov[i].iov_len;
	}
	oh.len = (uint32_t)len;
	oh.error = error;
	oh.unique = r->in->unique;
	/* ENOENT: the request was interrupted and the kernel no longer wants it. */
	if (writev(fuse_fd, v, error ? 1 : n + 1) < 0 && errno != ENOENT)
		fprintf(stderr, "latencyfs: reply to opcode %u: %s\n", r->in->opcode,
			strerror(errno));
}

static int reply_data(const struct req *r, const void *data, size_t len)
{
	struct iovec v = {(void *)data, len};
	send_reply(r, 0, &v, len ? 1 : 0);
	return 0;
}

static void fill_attr(struct fuse_attr *a, const struct stat *st)
{
	memset(a, 0, sizeof(*a));
	a->ino = st->st_ino;
	a->size = (uint64_t)st->st_size;
	a->blocks = (uint64_t)st->st_blocks;
	a->atime = (uint64_t)st->st_atim.tv_sec;
	a->mtime = (uint64_t)st->st_mtim.tv_sec;
	a->ctime = (uint64_t)st->st_ctim.tv_sec;
	a->atimensec = (uint32_t)st->st_atim.tv_nsec;
	a->mtimensec = (uint32_t)st->st_mtim.tv_nsec;
	a->ctimensec = (uint32_t)st->st_ctim.tv_nsec;
	a->mode = st->st_mode;
	a->nlink = (uint32_t)st->st_nlink;
	a->uid = st->st_uid;
	a->gid = st->st_gid;
	a->rdev = (uint32_t)st->st_rdev; /* glibc's dev_t low bits = kernel's new_encode_dev */
	a->blksize = (uint32_t)st->st_blksize;
}

/* Fill an entry reply for child NAME of PARENT (stat'ed here unless KNOWN),
 * taking one lookup reference: the kernel counts every entry we hand out. */
static int lookup_entry(struct node *parent, const char *name, const struct stat *known,
			struct fuse_entry_out *e)
{
	char path[PATH_MAX];
	struct stat st;
	memset(e, 0, sizeof(*e));
	int err = locked_path(parent, name, path);
	if (err)
		return err;
	if (known)
		st = *known;
	else if (fstatat(root_fd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;

	pthread_mutex_lock(&tree_lock);
	struct node *n = node_find(st.st_dev, st.st_ino);
	bool fresh = !n;
	if (fresh) {
		n = calloc(1, sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&tree_lock);
			return -ENOMEM;
		}
		n->dev = st.st_dev;
		n->ino = st.st_ino;
		n->pin_fd = -1;
		n->hashed = true;
		size_t h = node_hash(n->dev, n->ino);
		n->hnext = buckets[h];
		buckets[h] = n;
		if (++nhashed > nbuckets)
			nodes_grow();
		atomic_fetch_add_explicit(&stats->nodes, 1, memory_order_relaxed);
	}
	/* Hard links and renames behind our back: the latest name wins. */
	if (node_set_name(n, parent, name) < 0) {
		if (fresh)
			node_free_unused(n);
		pthread_mutex_unlock(&tree_lock);
		return -ENOMEM;
	}
	n->nlookup++;
	pthread_mutex_unlock(&tree_lock);

	e->nodeid = nodeid_of(n);
	e->entry_valid = entry_sec;
	e->entry_valid_nsec = entry_nsec;
	e->attr_valid = attr_sec;
	e->attr_valid_nsec = attr_nsec;
	fill_attr(&e->attr, &st);
	return 0;
}

/* Creators run as root; give new files to the caller, as a server would. */
static void chown_to_caller(const struct req *r, const char *path)
{
	if (r->in->uid != geteuid() || r->in->gid != getegid()) {
		if (fchownat(root_fd, path, r->in->uid, r->in->gid, AT_SYMLINK_NOFOLLOW) < 0)
			fprintf(stderr, "latencyfs: chown %s: %s\n", path, strerror(errno));
	}
}

static int reply_entry(const struct req *r, struct node *parent, const char *name)
{
	struct fuse_entry_out e;
	int err = lookup_entry(parent, name, NULL, &e);
	if (err)
		return err;
	return reply_data(r, &e, sizeof(e));
}

/* Argument helpers: every handler validates its payload before using it. */
#define ARG(type, var)                                                                     \
	if (r->arglen < sizeof(type))                                                      \
		return -EINVAL;                                                            \
	const type *var = (const type *)(const void *)r->arg

/* The NUL-terminated string at arg + off, or NULL if it runs off the end. */
static const char *arg_str(const struct req *r, size_t off)
{
	if (off >= r->arglen || !memchr(r->arg + off, '\0', r->arglen - off))
		return NULL;
	return r->arg + off;
}

#define NODE (node_of(r->in->nodeid))

/* ------------------------------------------------------------------------ */
/* Handlers: return 0 after replying, -errno to reply an error, NO_REPLY.    */

static int op_init(const struct req *r)
{
	ARG(struct fuse_init_in, in);
	struct fuse_init_out out;
	memset(&out, 0, sizeof(out));
	out.major = FUSE_KERNEL_VERSION;
	out.minor = FUSE_KERNEL_MINOR_VERSION;
	if (in->major != FUSE_KERNEL_VERSION) {
		/* A newer major: answer with ours and the kernel retries or gives up. */
		return reply_data(r, &out, 8);
	}
	if (in->minor < out.minor)
		out.minor = in->minor;
	/*
	 * ASYNC_READ: readahead may issue several READs of one file at once.
	 * ATOMIC_O_TRUNC: open(O_TRUNC) is one OPEN, not SETATTR(size=0) + OPEN.
	 * PARALLEL_DIROPS: concurrent LOOKUP/READDIR in one directory are not
	 * serialised by the kernel's directory lock (a server would not be).
	 * BIG_WRITES: implied since 7.x, harmless.
	 * Deliberately off: WRITEBACK_CACHE, AUTO_INVAL_DATA (a GETATTR before
	 * every cached read), DO_READDIRPLUS, POSIX/FLOCK locks (the kernel keeps
	 * locks locally), EXPORT_SUPPORT, CACHE_SYMLINKS, NO_OPEN(DIR)_SUPPORT.
	 */
	uint32_t want = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES |
			FUSE_PARALLEL_DIROPS;
	out.flags = in->flags & want;
	out.max_readahead = in->max_readahead < MAX_READAHEAD ? in->max_readahead : MAX_READAHEAD;
	out.max_background = 64; /* async READs/RELEASEs in flight; NFS has many slots */
	out.congestion_threshold = 48;
	out.max_write = MAX_WRITE;
	out.time_gran = 1;
	size_t len = out.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof(out);
	if (trace)
		fprintf(stderr, "latencyfs: INIT kernel %u.%u flags %#x -> %u.%u flags %#x\n",
			in->major, in->minor, in->flags, out.major, out.minor, out.flags);
	return reply_data(r, &out, len);
}

static int op_lookup(const struct req *r)
{
	const char *name = arg_str(r, 0);
	if (!name)
		return -EINVAL;
	struct fuse_entry_out e;
	int err = lookup_entry(NODE, name, NULL, &e);
	if (err == -ENOENT && negative_cache) {
		/* nodeid 0 with a timeout: the kernel caches the negative entry. */
		memset(&e, 0, sizeof(e));
		e.entry_valid = entry_sec;
		e.entry_valid_nsec = entry_nsec;
		return reply_data(r, &e, sizeof(e));
	}
	if (err)
		return err;
	return reply_data(r, &e, sizeof(e));
}

static int op_forget(const struct req *r)
{
	if (r->arglen >= sizeof(struct fuse_forget_in))
		node_forget(r->in->nodeid, ((const struct fuse_forget_in *)(const void *)r->arg)->nlookup);
	return NO_REPLY;
}

static int op_batch_forget(const struct req *r)
{
	if (r->arglen < sizeof(struct fuse_batch_forget_in))
		return NO_REPLY;
	const struct fuse_batch_forget_in *in = (const void *)r->arg;
	const struct fuse_forget_one *one = (const void *)(r->arg + sizeof(*in));
	size_t room = (r->arglen - sizeof(*in)) / sizeof(*one);
	for (size_t i = 0; i < in->count && i < room; i++)
		node_forget(one[i].nodeid, one[i].nlookup);
	return NO_REPLY;
}

static int reply_attr(const struct req *r, const struct stat *st)
{
	struct fuse_attr_out out;
	memset(&out, 0, sizeof(out));
	out.attr_valid = attr_sec;
	out.attr_valid_nsec = attr_nsec;
	fill_attr(&out.attr, st);
	return reply_data(r, &out, sizeof(out));
}

static int op_getattr(const struct req *r)
{
	ARG(struct fuse_getattr_in, in);
	struct stat st;
	int err;
	/* From an open regular file (e.g. before a read past the cached size). */
	if (in->getattr_flags & FUSE_GETATTR_FH)
		err = fstat((int)in->fh, &st) < 0 ? -errno : 0;
	else
		err = node_stat(NODE, &st);
	if (err)
		return err;
	return reply_attr(r, &st);
}

static int setattr_fd(const struct fuse_setattr_in *in, int fd)
{
	char proc[40];
	proc_path(proc, fd);
	if (in->valid & FATTR_MODE) {
		if (chmod(proc, in->mode & 07777) < 0)
			return -errno;
	}
	if (in->valid & (FATTR_UID | FATTR_GID)) {
		uid_t uid = in->valid & FATTR_UID ? in->uid : (uid_t)-1;
		gid_t gid = in->valid & FATTR_GID ? in->gid : (gid_t)-1;
		if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if (in->valid & FATTR_SIZE) {
		if (truncate(proc, (off_t)in->size) < 0)
			return -errno;
	}
	if (in->valid & (FATTR_ATIME | FATTR_MTIME)) {
		struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
		if (in->valid & FATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (in->valid & FATTR_ATIME)
			ts[0] = (struct timespec){(time_t)in->atime, (long)in->atimensec};
		if (in->valid & FATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (in->valid & FATTR_MTIME)
			ts[1] = (struct timespec){(time_t)in->mtime, (long)in->mtimensec};
		if (utimensat(fd, "", ts, AT_EMPTY_PATH) < 0)
			return -errno;
	}
	return 0;
}

static int op_setattr(const struct req *r)
{
	ARG(struct fuse_setattr_in, in);
	/* Act on the inode, never the handle: same result, and a directory
	 * handle is no fd here. */
	int fd = node_open(NODE, O_PATH);
	if (fd < 0)
		return fd;
	struct stat st;
	int err = setattr_fd(in, fd);
	if (!err && fstat(fd, &st) < 0)
		err = -errno;
	close(fd);
	if (err)
		return err;
	return reply_attr(r, &st);
}

static int op_readlink(const struct req *r)
{
	int fd = node_open(NODE, O_PATH);
	if (fd < 0)
		return fd;
	ssize_t len = readlinkat(fd, "", r->out, PATH_MAX);
	int err = errno;
	close(fd);
	if (len < 0)
		return -err;
	return reply_data(r, r->out, (size_t)len);
}

static int op_symlink(const struct req *r)
{
	const char *name = arg_str(r, 0);
	const char *target = name ? arg_str(r, strlen(name) + 1) : NULL;
	if (!target)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	if (symlinkat(target, root_fd, path) < 0)
		return -errno;
	chown_to_caller(r, path);
	return reply_entry(r, NODE, name);
}

static int op_mknod(const struct req *r)
{
	ARG(struct fuse_mknod_in, in);
	const char *name = arg_str(r, sizeof(*in));
	if (!name)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	if (mknodat(root_fd, path, in->mode, in->rdev) < 0)
		return -errno;
	chown_to_caller(r, path);
	return reply_entry(r, NODE, name);
}

static int op_mkdir(const struct req *r)
{
	ARG(struct fuse_mkdir_in, in);
	const char *name = arg_str(r, sizeof(*in));
	if (!name)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	if (mkdirat(root_fd, path, in->mode) < 0)
		return -errno;
	chown_to_caller(r, path);
	return reply_entry(r, NODE, name);
}

static int op_unlink(const struct req *r, int flags)
{
	const char *name = arg_str(r, 0);
	if (!name)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	struct stat st;
	bool known = fstatat(root_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (unlinkat(root_fd, path, flags) < 0)
		return -errno;
	if (known)
		forget_removed(&st);
	return reply_data(r, NULL, 0);
}

static int op_rename(const struct req *r, size_t inlen, uint64_t newdir, unsigned flags)
{
	const char *from = arg_str(r, inlen);
	const char *to = from ? arg_str(r, inlen + strlen(from) + 1) : NULL;
	if (!to)
		return -EINVAL;
	struct node *olddir = NODE, *todir = node_of(newdir);
	char from_path[PATH_MAX], to_path[PATH_MAX];
	pthread_mutex_lock(&tree_lock);
	int err = build_path(olddir, from, from_path);
	if (!err)
		err = build_path(todir, to, to_path);
	pthread_mutex_unlock(&tree_lock);
	if (err)
		return err;
	struct stat sf, st;
	bool have_from = fstatat(root_fd, from_path, &sf, AT_SYMLINK_NOFOLLOW) == 0;
	bool have_to = fstatat(root_fd, to_path, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		       !(have_from && sf.st_ino == st.st_ino && sf.st_dev == st.st_dev);
	int res = flags ? renameat2(root_fd, from_path, root_fd, to_path, flags)
			: renameat(root_fd, from_path, root_fd, to_path);
	if (res < 0)
		return -errno;

	/* Keep the tree in step: the moved node takes its new name, an
	 * overwritten one dies (or, for RENAME_EXCHANGE, takes the old name). */
	if (have_to && !(flags & RENAME_EXCHANGE))
		forget_removed(&st);
	pthread_mutex_lock(&tree_lock);
	struct node *nf = have_from ? node_find(sf.st_dev, sf.st_ino) : NULL;
	struct node *nt = have_to && (flags & RENAME_EXCHANGE) ? node_find(st.st_dev, st.st_ino)
							      : NULL;
	if (nf && node_set_name(nf, todir, to) < 0)
		node_kill(nf);
	if (nt && node_set_name(nt, olddir, from) < 0)
		node_kill(nt);
	pthread_mutex_unlock(&tree_lock);
	return reply_data(r, NULL, 0);
}

static int op_link(const struct req *r)
{
	ARG(struct fuse_link_in, in);
	const char *name = arg_str(r, sizeof(*in));
	if (!name)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	int fd = node_open(node_of(in->oldnodeid), O_PATH);
	if (fd < 0)
		return fd;
	/* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc path works without. */
	if (linkat(fd, "", root_fd, path, AT_EMPTY_PATH) < 0) {
		char proc[40];
		proc_path(proc, fd);
		if (linkat(AT_FDCWD, proc, root_fd, path, AT_SYMLINK_FOLLOW) < 0) {
			err = -errno;
			close(fd);
			return err;
		}
	}
	close(fd);
	return reply_entry(r, NODE, name);
}

/* Open flags the kernel passes that must not reach the underlying open:
 * O_NOFOLLOW is ours to set, O_DIRECT needs aligned buffers (the page cache
 * above us is what matters here), O_TRUNC waits until the file is checked. */
#define STRIP_OPEN_FLAGS (O_NOFOLLOW | O_DIRECT | O_NOCTTY | O_CREAT | O_EXCL | O_TRUNC)

static void fill_open(struct fuse_open_out *o, int fd)
{
	memset(o, 0, sizeof(*o));
	o->fh = (uint64_t)fd;
	/* Keep the page cache across opens (mmap and re-reads of unchanged files
	 * are served locally); never direct_io, which would break shared mmap. */
	o->open_flags = FOPEN_KEEP_CACHE;
}

static int op_open(const struct req *r)
{
	ARG(struct fuse_open_in, in);
	struct node *n = NODE;
	int fd = node_open(n, (int)(in->flags & ~(unsigned)STRIP_OPEN_FLAGS));
	if (fd < 0)
		return fd;
	/* ATOMIC_O_TRUNC: the kernel leaves O_TRUNC to us. */
	if ((in->flags & O_TRUNC) && (in->flags & O_ACCMODE) != O_RDONLY && ftruncate(fd, 0) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	struct fuse_open_out out;
	fill_open(&out, fd);
	node_pin(n, fd);
	return reply_data(r, &out, sizeof(out));
}

static int op_create(const struct req *r)
{
	ARG(struct fuse_create_in, in);
	const char *name = arg_str(r, sizeof(*in));
	if (!name)
		return -EINVAL;
	char path[PATH_MAX];
	int err = locked_path(NODE, name, path);
	if (err)
		return err;
	unsigned flags = (in->flags & ~(unsigned)(O_NOFOLLOW | O_DIRECT | O_NOCTTY)) | O_CREAT;
	int fd = openat(root_fd, path, (int)flags | O_NOFOLLOW | O_CLOEXEC, in->mode);
	if (fd < 0)
		return -errno;
	chown_to_caller(r, path);
	struct {
		struct fuse_entry_out e;
		struct fuse_open_out o;
	} out;
	struct stat st;
	err = fstat(fd, &st) < 0 ? -errno : lookup_entry(NODE, name, &st, &out.e);
	if (err) {
		close(fd);
		return err;
	}
	fill_open(&out.o, fd);
	node_pin(node_of(out.e.nodeid), fd);
	return reply_data(r, &out, sizeof(out));
}

static int op_read(const struct req *r)
{
	ARG(struct fuse_read_in, in);
	size_t size = in->size < OUT_BUF_SIZE ? in->size : OUT_BUF_SIZE;
	size_t got = 0;
	while (got < size) {
		ssize_t n = pread((int)in->fh, r->out + got, size - got, (off_t)(in->offset + got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (got == 0)
				return -errno;
			break;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	atomic_fetch_add_explicit(&stats->read_bytes, got, memory_order_relaxed);
	return reply_data(r, r->out, got);
}

static int op_write(const struct req *r)
{
	ARG(struct fuse_write_in, in);
	if (r->arglen - sizeof(*in) < in->size)
		return -EINVAL;
	const char *data = r->arg + sizeof(*in);
	size_t done = 0;
	while (done < in->size) {
		ssize_t n = pwrite((int)in->fh, data + done, in->size - done,
				   (off_t)(in->offset + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (done == 0)
				return -errno;
			break;
		}
		done += (size_t)n;
	}
	atomic_fetch_add_explicit(&stats->write_bytes, done, memory_order_relaxed);
	struct fuse_write_out out = {.size = (uint32_t)done};
	return reply_data(r, &out, sizeof(out));
}

static int op_statfs(const struct req *r)
{
	int fd = node_open(NODE, O_PATH);
	if (fd < 0)
		return fd;
	struct statfs s;
	int res = fstatfs(fd, &s);
	int err = errno;
	close(fd);
	if (res < 0)
		return -err;
	struct fuse_statfs_out out;
	memset(&out, 0, sizeof(out));
	out.st.blocks = (uint64_t)s.f_blocks;
	out.st.bfree = (uint64_t)s.f_bfree;
	out.st.bavail = (uint64_t)s.f_bavail;
	out.st.files = (uint64_t)s.f_files;
	out.st.ffree = (uint64_t)s.f_ffree;
	out.st.bsize = (uint32_t)s.f_bsize;
	out.st.namelen = (uint32_t)s.f_namelen;
	out.st.frsize = (uint32_t)s.f_frsize;
	return reply_data(r, &out, sizeof(out));
}

static int op_release(const struct req *r)
{
	ARG(struct fuse_release_in, in);
	close((int)in->fh);
	node_unpin(NODE);
	return reply_data(r, NULL, 0);
}

static int op_flush(const struct req *r)
{
	ARG(struct fuse_flush_in, in);
	/* close() of a duplicate reports deferred write errors, as close(2) would. */
	int fd = dup((int)in->fh);
	if (fd < 0)
		return -errno;
	if (close(fd) < 0)
		return -errno;
	return reply_data(r, NULL, 0);
}

static int op_fsync(const struct req *r)
{
	ARG(struct fuse_fsync_in, in);
	int res = in->fsync_flags & FUSE_FSYNC_FDATASYNC ? fdatasync((int)in->fh) : fsync((int)in->fh);
	if (res < 0)
		return -errno;
	return reply_data(r, NULL, 0);
}

/* Directory handles: a DIR stream plus the entry that did not fit last time. */
struct dirp {
	pthread_mutex_t lock;
	DIR *dp;
	struct dirent *entry; /* read but not yet sent */
	uint64_t offset;      /* the offset the next READDIR should ask for */
};

static int op_opendir(const struct req *r)
{
	struct node *n = NODE;
	int fd = node_open(n, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		return fd;
	struct dirp *d = calloc(1, sizeof(*d));
	if (!d || !(d->dp = fdopendir(fd))) {
		int err = d ? -errno : -ENOMEM;
		free(d);
		close(fd);
		return err;
	}
	pthread_mutex_init(&d->lock, NULL);
	struct fuse_open_out out;
	memset(&out, 0, sizeof(out));
	out.fh = (uint64_t)(uintptr_t)d; /* no FOPEN_CACHE_DIR: every listing asks */
	node_pin(n, fd);
	return reply_data(r, &out, sizeof(out));
}

static int op_readdir(const struct req *r)
{
	ARG(struct fuse_read_in, in);
	struct dirp *d = (struct dirp *)(uintptr_t)in->fh;
	size_t cap = in->size < OUT_BUF_SIZE ? in->size : OUT_BUF_SIZE;
	size_t used = 0;
	int err = 0;
	pthread_mutex_lock(&d->lock);
	if (in->offset != d->offset) {
		seekdir(d->dp, (long)in->offset);
		d->entry = NULL;
		d->offset = in->offset;
	}
	for (;;) {
		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				err = errno;
				break;
			}
		}
		size_t namelen = strlen(d->entry->d_name);
		size_t reclen = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
		if (used + reclen > cap)
			break; /* keep d->entry for the next READDIR */
		struct fuse_dirent *de = (struct fuse_dirent *)(void *)(r->out + used);
		de->ino = d->entry->d_ino;
		de->off = (uint64_t)d->entry->d_off; /* telldir cookie of the next entry */
		de->namelen = (uint32_t)namelen;
		de->type = d->entry->d_type;
		memcpy(de->name, d->entry->d_name, namelen);
		memset(de->name + namelen, 0, reclen - FUSE_NAME_OFFSET - namelen);
		used += reclen;
		d->offset = de->off;
		d->entry = NULL;
	}
	pthread_mutex_unlock(&d->lock);
	if (err && used == 0)
		return -err;
	return reply_data(r, r->out, used);
}

static int op_releasedir(const struct req *r)
{
	ARG(struct fuse_release_in, in);
	struct dirp *d = (struct dirp *)(uintptr_t)in->fh;
	closedir(d->dp);
	pthread_mutex_destroy(&d->lock);
	free(d);
	node_unpin(NODE);
	return reply_data(r, NULL, 0);
}

static int op_fsyncdir(const struct req *r)
{
	ARG(struct fuse_fsync_in, in);
	struct dirp *d = (struct dirp *)(uintptr_t)in->fh;
	pthread_mutex_lock(&d->lock);
	int res = fsync(dirfd(d->dp));
	int err = errno;
	pthread_mutex_unlock(&d->lock);
	if (res < 0)
		return -err;
	return reply_data(r, NULL, 0);
}

static int op_access(const struct req *r)
{
	ARG(struct fuse_access_in, in);
	int fd = node_open(NODE, O_PATH);
	if (fd < 0)
		return fd;
	char proc[40];
	proc_path(proc, fd);
	int res = faccessat(AT_FDCWD, proc, (int)in->mask, 0);
	int err = errno;
	close(fd);
	if (res < 0)
		return -err;
	return reply_data(r, NULL, 0);
}

static int op_lseek(const struct req *r)
{
	ARG(struct fuse_lseek_in, in);
	off_t off = lseek((int)in->fh, (off_t)in->offset, (int)in->whence);
	if (off < 0)
		return -errno;
	struct fuse_lseek_out out = {.offset = (uint64_t)off};
	return reply_data(r, &out, sizeof(out));
}

static int op_fallocate(const struct req *r)
{
	ARG(struct fuse_fallocate_in, in);
	if (fallocate((int)in->fh, (int)in->mode, (off_t)in->offset, (off_t)in->length) < 0)
		return -errno;
	return reply_data(r, NULL, 0);
}

static int dispatch(const struct req *r)
{
	switch (r->in->opcode) {
	case FUSE_INIT: return op_init(r);
	case FUSE_DESTROY: return reply_data(r, NULL, 0);
	case FUSE_LOOKUP: return op_lookup(r);
	case FUSE_FORGET: return op_forget(r);
	case FUSE_BATCH_FORGET: return op_batch_forget(r);
	case FUSE_GETATTR: return op_getattr(r);
	case FUSE_SETATTR: return op_setattr(r);
	case FUSE_READLINK: return op_readlink(r);
	case FUSE_SYMLINK: return op_symlink(r);
	case FUSE_MKNOD: return op_mknod(r);
	case FUSE_MKDIR: return op_mkdir(r);
	case FUSE_UNLINK: return op_unlink(r, 0);
	case FUSE_RMDIR: return op_unlink(r, AT_REMOVEDIR);
	case FUSE_RENAME: {
		ARG(struct fuse_rename_in, in);
		return op_rename(r, sizeof(*in), in->newdir, 0);
	}
	case FUSE_RENAME2: {
		ARG(struct fuse_rename2_in, in);
		return op_rename(r, sizeof(*in), in->newdir, in->flags);
	}
	case FUSE_LINK: return op_link(r);
	case FUSE_OPEN: return op_open(r);
	case FUSE_CREATE: return op_create(r);
	case FUSE_READ: return op_read(r);
	case FUSE_WRITE: return op_write(r);
	case FUSE_STATFS: return op_statfs(r);
	case FUSE_RELEASE: return op_release(r);
	case FUSE_FLUSH: return op_flush(r);
	case FUSE_FSYNC: return op_fsync(r);
	case FUSE_OPENDIR: return op_opendir(r);
	case FUSE_READDIR: return op_readdir(r);
	case FUSE_RELEASEDIR: return op_releasedir(r);
	case FUSE_FSYNCDIR: return op_fsyncdir(r);
	case FUSE_ACCESS: return op_access(r);
	case FUSE_LSEEK: return op_lseek(r);
	case FUSE_FALLOCATE: return op_fallocate(r);
	case FUSE_IOCTL: return -ENOTTY; /* what a local fs says to TCGETS */
	case FUSE_INTERRUPT: return NO_REPLY; /* we answer the request normally */
	case FUSE_NOTIFY_REPLY: return NO_REPLY;
	default:
		/* Including the xattr ops: ENOSYS makes the kernel stop asking
		 * (fc->no_getxattr etc.), so e.g. the security.capability probe before
		 * each write costs one request per mount, not one per write. */
		return -ENOSYS;
	}
}

/* Requests nobody waits on: no reply, so neither in flight nor delayed. */
static bool is_unwaited(uint32_t op)
{
	return op == FUSE_FORGET || op == FUSE_BATCH_FORGET || op == FUSE_INTERRUPT ||
	       op == FUSE_NOTIFY_REPLY;
}

/*
 * Answered at once although a caller waits: the mount handshake, and IOCTL.
 * FUSE forwards every ioctl on a regular file (e.g. the TCGETS behind
 * Python's open() -> isatty()) and has no ENOSYS latch for it; a network
 * filesystem client answers ENOTTY locally, so it is no round trip to model.
 */
static bool is_undelayed(uint32_t op)
{
	return is_unwaited(op) || op == FUSE_INIT || op == FUSE_DESTROY || op == FUSE_IOCTL;
}

static const char *op_name(uint32_t op)
{
	static const char *const names[] = {
		[FUSE_LOOKUP] = "LOOKUP", [FUSE_FORGET] = "FORGET", [FUSE_GETATTR] = "GETATTR",
		[FUSE_SETATTR] = "SETATTR", [FUSE_READLINK] = "READLINK", [FUSE_SYMLINK] = "SYMLINK",
		[FUSE_MKNOD] = "MKNOD", [FUSE_MKDIR] = "MKDIR", [FUSE_UNLINK] = "UNLINK",
		[FUSE_RMDIR] = "RMDIR", [FUSE_RENAME] = "RENAME", [FUSE_LINK] = "LINK",
		[FUSE_OPEN] = "OPEN", [FUSE_READ] = "READ", [FUSE_WRITE] = "WRITE",
		[FUSE_STATFS] = "STATFS", [FUSE_RELEASE] = "RELEASE", [FUSE_FSYNC] = "FSYNC",
		[FUSE_SETXATTR] = "SETXATTR", [FUSE_GETXATTR] = "GETXATTR",
		[FUSE_LISTXATTR] = "LISTXATTR", [FUSE_REMOVEXATTR] = "REMOVEXATTR",
		[FUSE_FLUSH] = "FLUSH", [FUSE_INIT] = "INIT", [FUSE_OPENDIR] = "OPENDIR",
		[FUSE_READDIR] = "READDIR", [FUSE_RELEASEDIR] = "RELEASEDIR",
		[FUSE_FSYNCDIR] = "FSYNCDIR", [FUSE_GETLK] = "GETLK", [FUSE_SETLK] = "SETLK",
		[FUSE_SETLKW] = "SETLKW", [FUSE_ACCESS] = "ACCESS", [FUSE_CREATE] = "CREATE",
		[FUSE_INTERRUPT] = "INTERRUPT", [FUSE_BMAP] = "BMAP", [FUSE_DESTROY] = "DESTROY",
		[FUSE_IOCTL] = "IOCTL", [FUSE_POLL] = "POLL", [FUSE_NOTIFY_REPLY] = "NOTIFY_REPLY",
		[FUSE_BATCH_FORGET] = "BATCH_FORGET", [FUSE_FALLOCATE] = "FALLOCATE",
		[FUSE_READDIRPLUS] = "READDIRPLUS", [FUSE_RENAME2] = "RENAME2",
		[FUSE_LSEEK] = "LSEEK", [FUSE_COPY_FILE_RANGE] = "COPY_FILE_RANGE",
		[FUSE_SETUPMAPPING] = "SETUPMAPPING", [FUSE_REMOVEMAPPING] = "REMOVEMAPPING",
		[FUSE_SYNCFS] = "SYNCFS", [FUSE_TMPFILE] = "TMPFILE",
	};
	if (op < sizeof(names) / sizeof(names[0]) && names[op])
		return names[op];
	return "?";
}

static void trace_request(const struct req *r)
{
	const char *name = "";
	switch (r->in->opcode) {
	case FUSE_LOOKUP:
	case FUSE_UNLINK:
	case FUSE_RMDIR:
	case FUSE_SYMLINK:
		name = arg_str(r, 0);
		break;
	case FUSE_MKDIR:
		name = arg_str(r, sizeof(struct fuse_mkdir_in));
		break;
	case FUSE_CREATE:
		name = arg_str(r, sizeof(struct fuse_create_in));
		break;
	default:
		break;
	}
	char extra[64] = "";
	if (r->in->opcode == FUSE_READ && r->arglen >= sizeof(struct fuse_read_in)) {
		const struct fuse_read_in *in = (const void *)r->arg;
		snprintf(extra, sizeof(extra), " off=%llu size=%u", (unsigned long long)in->offset,
			 in->size);
	}
	fprintf(stderr, "latencyfs: %s node=%llu pid=%u %s%s\n", op_name(r->in->opcode),
		(unsigned long long)r->in->nodeid, r->in->pid, name ? name : "", extra);
}

/*
 * Worker pool, leader/follower style: exactly one thread at a time blocks in
 * read(); the others park on pool_cond. A thread that receives a request it
 * will sleep on (or that may block on the disk) first hands the reader role
 * to a parked thread, so delayed requests overlap, up to --threads of them.
 * A request answered at once is served by the reader itself, which then reads
 * again: with no delay one hot thread serves everything (~12 us a request
 * here, against ~22 us when the kernel wakes the 16 readers round-robin).
 */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static int pool_readers; /* threads in (or about to enter) read() */
static bool pool_stopping;

static void pool_handoff(void)
{
	pthread_mutex_lock(&pool_lock);
	if (pool_readers == 0)
		pthread_cond_signal(&pool_cond);
	pthread_mutex_unlock(&pool_lock);
}

/* Requests whose handling can take a while even without a delay. */
static bool may_block(uint32_t op)
{
	return op == FUSE_READ || op == FUSE_WRITE || op == FUSE_FSYNC || op == FUSE_FSYNCDIR ||
	       op == FUSE_FALLOCATE || op == FUSE_SETATTR || op == FUSE_FLUSH ||
	       op == FUSE_READDIR || op == FUSE_CREATE || op == FUSE_OPEN;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Sleep until `us` after `start` (when the request was read). Timer wake-ups
 * are late by tens of microseconds (~50 us on this VM), which would make a
 * 1 ms round trip cost ~1.05 ms on top of the FUSE overhead; so wake that much
 * early, by a running average of how late recent wake-ups were.
 */
static _Atomic uint64_t oversleep_ns = 0;

static void sleep_since(uint64_t start, uint64_t us)
{
	uint64_t early = atomic_load_explicit(&oversleep_ns, memory_order_relaxed);
	uint64_t target = start + us * 1000;
	if (early > us * 500)
		early = us * 500; /* never cut a delay by more than half */
	uint64_t wake = target - early;
	if (now_ns() >= wake)
		return;
	struct timespec ts = {(time_t)(wake / 1000000000u), (long)(wake % 1000000000u)};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
	uint64_t late = now_ns() - wake;
	if (late < 1000000) /* ignore preemption outliers */
		atomic_store_explicit(&oversleep_ns, (early * 7 + late) / 8, memory_order_relaxed);
}

static void handle(char *buf, size_t len, char *out)
{
	uint64_t received = now_ns();
	const struct fuse_in_header *in = (const void *)buf;
	if (len < sizeof(*in) || in->len != len)
		return; /* the kernel never does this; nothing sensible to answer */
	/* Extensions (security context, groups) trail the payload; we negotiate
	 * none, but never mistake them for arguments. */
	size_t ext = (size_t)in->total_extlen * 8;
	if (ext > len - sizeof(*in))
		ext = 0;
	struct req r = {in, buf + sizeof(*in), len - sizeof(*in) - ext, out};
	uint32_t op = in->opcode;

	if (op < STATS_NOPS)
		atomic_fetch_add_explicit(&stats->ops[op], 1, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&stats->other_ops, 1, memory_order_relaxed);
	if (trace)
		trace_request(&r);

	bool waited = !is_unwaited(op);
	if (waited) {
		uint64_t now = atomic_fetch_add(&stats->in_flight, 1) + 1;
		uint64_t max = atomic_load(&stats->max_in_flight);
		while (now > max && !atomic_compare_exchange_weak(&stats->max_in_flight, &max, now))
			;
		uint64_t us = atomic_load_explicit(&stats->delay_us, memory_order_relaxed);
		if (is_undelayed(op))
			us = 0;
		if (us || may_block(op))
			pool_handoff();
		if (us)
			sleep_since(received, us);
	}
	int res = dispatch(&r);
	if (res < 0)
		send_reply(&r, res, NULL, 0);
	if (waited)
		atomic_fetch_sub(&stats->in_flight, 1);
}

static void *worker(void *arg)
{
	(void)arg;
	/* Default timer slack is 50 us; a 1 ms delay should sleep 1 ms. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	char *buf = malloc(IN_BUF_SIZE);
	char *out = malloc(OUT_BUF_SIZE);
	if (!buf || !out) {
		fprintf(stderr, "latencyfs: out of memory\n");
		exit(1);
	}
	for (;;) {
		pthread_mutex_lock(&pool_lock);
		while (pool_readers > 0 && !pool_stopping)
			pthread_cond_wait(&pool_cond, &pool_lock);
		if (pool_stopping) {
			pthread_mutex_unlock(&pool_lock);
			break;
		}
		pool_readers++;
		pthread_mutex_unlock(&pool_lock);

		ssize_t n = read(fuse_fd, buf, IN_BUF_SIZE);
		int err = errno;

		pthread_mutex_lock(&pool_lock);
		pool_readers--;
		pthread_mutex_unlock(&pool_lock);
		if (n >= 0) {
			handle(buf, (size_t)n, out);
			continue;
		}
		/* ENOENT: request aborted while we read it; EINTR/EAGAIN: retry. */
		if (err == EINTR || err == EAGAIN || err == ENOENT)
			continue;
		if (err != ENODEV)
			fprintf(stderr, "latencyfs: read /dev/fuse: %s\n", strerror(err));
		/* ENODEV: the filesystem was unmounted (by us or anyone) or aborted. */
		pthread_mutex_lock(&pool_lock);
		pool_stopping = true;
		pthread_cond_broadcast(&pool_cond);
		pthread_mutex_unlock(&pool_lock);
		pthread_kill(main_thread, SIGUSR1);
		break;
	}
	free(buf);
	free(out);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Setup.                                                                    */

static void raise_fd_limit(void)
{
	/* Each open file holds an fd, and each open node one more (its pin). */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = 1 << 20;
	FILE *f = fopen("/proc/sys/fs/nr_open", "r");
	if (f) {
		unsigned long v;
		if (fscanf(f, "%lu", &v) == 1)
			want = v;
		fclose(f);
	}
	if (rl.rlim_max < want) {
		struct rlimit big = {want, want};
		if (setrlimit(RLIMIT_NOFILE, &big) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static void setup_stats(const char *path, uint64_t delay_us)
{
	if (path) {
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || ftruncate(fd, sizeof(struct lfs_stats)) < 0) {
			fprintf(stderr, "latencyfs: stats file %s: %s\n", path, strerror(errno));
			exit(1);
		}
		stats = mmap(NULL, sizeof(struct lfs_stats), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	} else {
		stats = mmap(NULL, sizeof(struct lfs_stats), PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	}
	if (stats == MAP_FAILED) {
		fprintf(stderr, "latencyfs: mmap stats: %s\n", strerror(errno));
		exit(1);
	}
	stats->version = STATS_VERSION;
	stats->nops = STATS_NOPS;
	stats->pid = (uint64_t)getpid();
	atomic_store(&stats->delay_us, delay_us);
	atomic_thread_fence(memory_order_release);
	stats->magic = STATS_MAGIC;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: latencyfs SOURCE MOUNTPOINT [--delay-us N] [--entry-timeout SEC]\n"
		"                 [--attr-timeout SEC] [--threads N] [--stats FILE]\n"
		"                 [--no-default-permissions] [--exit-with-parent] [--trace]\n"
		"Mount a passthrough of SOURCE on MOUNTPOINT that sleeps N microseconds\n"
		"before answering each request (default 1000); timeouts 0 (default) turn\n"
		"the kernel's dentry/attribute caches off. Serves in the foreground;\n"
		"SIGTERM/SIGINT unmount (lazily) and exit. Needs root and /dev/fuse.\n");
}

int main(int argc, char **argv)
{
	const char *source = NULL, *stats_path = NULL;
	long threads = 16;
	uint64_t delay_us = 1000;
	double entry_timeout = 0, attr_timeout = 0;
	bool default_permissions = true, exit_with_parent = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool has_value = i + 1 < argc;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--no-default-permissions")) {
			default_permissions = false;
		} else if (!strcmp(a, "--exit-with-parent")) {
			exit_with_parent = true;
		} else if (!strcmp(a, "--trace")) {
			trace = true;
		} else if (!strncmp(a, "--", 2) && !has_value) {
			fprintf(stderr, "latencyfs: %s needs a value (or is unknown)\n", a);
			return 2;
		} else if (!strcmp(a, "--delay-us")) {
			delay_us = (uint64_t)parse_int(a, argv[++i], 0, 3600L * 1000000);
		} else if (!strcmp(a, "--entry-timeout")) {
			entry_timeout = parse_seconds(a, argv[++i]);
		} else if (!strcmp(a, "--attr-timeout")) {
			attr_timeout = parse_seconds(a, argv[++i]);
		} else if (!strcmp(a, "--threads")) {
			threads = parse_int(a, argv[++i], 1, 1024);
		} else if (!strcmp(a, "--stats")) {
			stats_path = argv[++i];
		} else if (a[0] == '-') {
			fprintf(stderr, "latencyfs: unknown option %s\n", a);
			usage(stderr);
			return 2;
		} else if (!source) {
			source = a;
		} else if (!mountpoint) {
			mountpoint = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!source || !mountpoint) {
		usage(stderr);
		return 2;
	}
	split_seconds(entry_timeout, &entry_sec, &entry_nsec);
	split_seconds(attr_timeout, &attr_sec, &attr_nsec);
	negative_cache = entry_timeout > 0;

	/* Signals go to the main thread only, which waits for them below. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	main_thread = pthread_self();
	pid_t parent = getppid();

	root_fd = open(source, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat root_st;
	if (root_fd < 0 || fstat(root_fd, &root_st) < 0) {
		fprintf(stderr, "latencyfs: source %s: %s\n", source, strerror(errno));
		return 1;
	}
	root_node.dev = root_st.st_dev;
	root_node.ino = root_st.st_ino;
	root_node.pin_fd = -1;
	nbuckets = 1024;
	buckets = calloc(nbuckets, sizeof(*buckets));
	setup_stats(stats_path, delay_us);
	raise_fd_limit();
	umask(0); /* the kernel already applied the caller's umask */

	fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fuse_fd < 0) {
		fprintf(stderr, "latencyfs: open /dev/fuse: %s\n", strerror(errno));
		return 1;
	}
	char opts[256];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other%s",
		 fuse_fd, default_permissions ? ",default_permissions" : "");
	if (mount("latencyfs", mountpoint, "fuse.latencyfs", MS_NOSUID | MS_NODEV, opts) < 0) {
		fprintf(stderr, "latencyfs: mount %s: %s\n", mountpoint, strerror(errno));
		return 1;
	}

	for (long i = 0; i < threads; i++) {
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		int err = pthread_create(&t, &attr, worker, NULL);
		pthread_attr_destroy(&attr);
		if (err) {
			fprintf(stderr, "latencyfs: pthread_create: %s\n", strerror(err));
			umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW);
			return 1;
		}
		pthread_detach(t);
	}

	/*
	 * Wait for: SIGTERM/SIGINT/SIGHUP (unmount lazily, then give requests on
	 * still-open files up to 2 s before exiting, which aborts them), a second
	 * such signal (exit now), SIGUSR1 from a worker that saw ENODEV (the fs is
	 * gone, however it went), or, with --exit-with-parent, the parent's death.
	 */
	bool unmounting = false;
	struct timespec deadline = {0, 0};
	for (;;) {
		struct timespec tick = {0, 200 * 1000 * 1000};
		int sig = sigtimedwait(&sigs, NULL, &tick);
		if (sig == SIGUSR1)
			break;
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		bool orphaned = exit_with_parent && getppid() != parent;
		if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || (orphaned && !unmounting)) {
			if (unmounting)
				return 0;
			unmounting = true;
			if (umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL)
				fprintf(stderr, "latencyfs: umount %s: %s\n", mountpoint,
					strerror(errno));
			deadline = now;
			deadline.tv_sec += 2;
		} else if (unmounting && (now.tv_sec > deadline.tv_sec ||
					  (now.tv_sec == deadline.tv_sec &&
					   now.tv_nsec >= deadline.tv_nsec))) {
			return 0; /* still busy after detach: exiting aborts the rest */
		}
	}
	/*
	 * The connection is dead. If it was aborted while still mounted (e.g. via
	 * /sys/fs/fuse/connections/N/abort) the mount is left answering ENOTCONN:
	 * remove it. A normal unmount already removed it and stat() succeeds.
	 */
	struct stat st;
	if (!unmounting && stat(mountpoint, &st) < 0 && errno == ENOTCONN)
		umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW);
	return 0;
}
