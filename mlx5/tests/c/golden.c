/*
 * Golden bytes for mlx5/tests/golden.rs.
 *
 * A line-oriented interpreter that builds mlx5 send-queue segments, whole
 * WQEs and 64-byte CQEs with rdma-core's own helpers and struct definitions
 * (<infiniband/mlx5dv.h>) and prints their bytes as lowercase hex. Nothing
 * here comes from the Rust crate: this is the reference it is checked
 * against.
 *
 * Numbers are decimal or 0x-hex. HEX is a byte string in hex, "-" when
 * empty. Every command prints exactly one line.
 *
 *   ctrl PI OPCODE QPN FM_CE_SE DS IMM
 *       mlx5dv_set_ctrl_seg(opmod 0, signature 0, imm = htobe32(IMM))
 *   data LEN LKEY ADDR                 mlx5dv_set_data_seg
 *   raddr ADDR RKEY                    struct mlx5_wqe_raddr_seg
 *   atomic SWAP_ADD COMPARE            struct mlx5_wqe_atomic_seg
 *   inline HEX                         struct mlx5_wqe_inl_data_seg, data, zero pad to 16
 *   wqe OP PI QPN SIGNALED FENCE SOLICITED IMM RADDR RKEY SWAP COMPARE_ADD NOP_BBS
 *       (sge N [LEN LKEY ADDR]... | inline HEX)
 *       A whole WQE laid out as the mlx5 provider does for an RC QP (ctrl,
 *       raddr, atomic, data), OP one of nop write write_imm send send_imm
 *       read cas faa, taking the fields of an ibv_send_wr; prints
 *       "DS WQEBBS HEX" (HEX is DS * 16 bytes).
 *   cqe OPCODE OWNER SE SRQN_UIDX IMM_INVAL_PKEY BYTE_CNT SOP_DROP_QPN WQE_COUNTER
 *       WQE_ID ML_PATH SLID FLAGS_RQPN HDS_IP_EXT L4_HDR_TYPE_ETC VLAN_INFO
 *       APP APP_OP APP_INFO TIMESTAMP SIGNATURE
 *       A zeroed struct mlx5_cqe64 filled field by field; prints its 64 bytes.
 *   err OPCODE OWNER SRQN VENDOR_ERR_SYND SYNDROME S_WQE_OPCODE_QPN WQE_COUNTER
 *       RSVD0_HEX RSVD1_HEX SIGNATURE
 *       The same for struct mlx5_err_cqe.
 *   owned OP_OWN CI LOG_N
 *       1 if the provider's get_sw_cqe() would hand the CQE at consumer
 *       counter CI of a 2^LOG_N-entry CQ to software, else 0.
 *   consts                             NAME=VALUE ... of the header constants
 *   layout                             NAME=VALUE ... of offsetof/sizeof
 *
 * All of stdin is read before anything is written, so the caller may write
 * its whole input before reading the output without filling both pipes.
 */
#define _DEFAULT_SOURCE
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <infiniband/mlx5dv.h>

/* The largest WQE: 63 16-byte segments (ds is 6 bits). */
#define MAX_WQE_BYTES (63 * 16)
#define SEP " \t\r\n"

static unsigned long line_no;

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "golden.c: input line %lu: ", line_no);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static char *word(char **save)
{
	char *t = strtok_r(NULL, SEP, save);

	if (!t)
		die("missing argument");
	return t;
}

static uint64_t num(char **save, uint64_t max)
{
	char *t = word(save);
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(t, &end, 0);
	if (errno || *end || t[0] == '-')
		die("not a number: %s", t);
	if (v > max)
		die("%s is above %llu", t, (unsigned long long)max);
	return v;
}

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	die("bad hex digit '%c'", c);
	return 0;
}

/* Decodes a HEX argument ("-": empty) into out; returns its length. */
static size_t unhex(char **save, uint8_t *out, size_t cap)
{
	char *t = word(save);
	size_t n, i;

	if (strcmp(t, "-") == 0)
		return 0;
	n = strlen(t);
	if (n % 2 || n / 2 > cap)
		die("bad hex argument of %zu digits", n);
	for (i = 0; i < n / 2; i++)
		out[i] = (uint8_t)(nibble(t[2 * i]) << 4 | nibble(t[2 * i + 1]));
	return n / 2;
}

static void end_of_line(char **save)
{
	if (strtok_r(NULL, SEP, save))
		die("trailing arguments");
}

static void print_hex(const void *p, size_t n)
{
	const uint8_t *b = p;
	size_t i;

	for (i = 0; i < n; i++)
		printf("%02x", b[i]);
}

/* ---- segments: each writes at buf and returns the bytes it took ---- */

static size_t put_ctrl(uint8_t *buf, uint16_t pi, uint8_t opcode, uint32_t qpn,
		       uint8_t fm_ce_se, uint8_t ds, uint32_t imm)
{
	struct mlx5_wqe_ctrl_seg ctrl;

	memset(&ctrl, 0, sizeof(ctrl));
	/* The header stores imm as given: the caller passes it big-endian. */
	mlx5dv_set_ctrl_seg(&ctrl, pi, opcode, 0, qpn, fm_ce_se, ds, 0,
			    htobe32(imm));
	memcpy(buf, &ctrl, sizeof(ctrl));
	return sizeof(ctrl);
}

/* The provider's MLX5_ATOMIC_SIZE: the bytes an atomic returns. */
#define ATOMIC_SIZE 8

static size_t put_data(uint8_t *buf, uint32_t len, uint32_t lkey, uint64_t addr)
{
	struct mlx5_wqe_data_seg seg;

	memset(&seg, 0, sizeof(seg));
	mlx5dv_set_data_seg(&seg, len, lkey, (uintptr_t)addr);
	memcpy(buf, &seg, sizeof(seg));
	return sizeof(seg);
}

static size_t put_raddr(uint8_t *buf, uint64_t addr, uint32_t rkey)
{
	struct mlx5_wqe_raddr_seg seg;

	memset(&seg, 0, sizeof(seg));
	seg.raddr = htobe64(addr);
	seg.rkey = htobe32(rkey);
	seg.reserved = 0;
	memcpy(buf, &seg, sizeof(seg));
	return sizeof(seg);
}

static size_t put_atomic(uint8_t *buf, uint64_t swap_add, uint64_t compare)
{
	struct mlx5_wqe_atomic_seg seg;

	seg.swap_add = htobe64(swap_add);
	seg.compare = htobe64(compare);
	memcpy(buf, &seg, sizeof(seg));
	return sizeof(seg);
}

static size_t put_inline(uint8_t *buf, const uint8_t *data, uint32_t len)
{
	struct mlx5_wqe_inl_data_seg seg;
	size_t total = (sizeof(seg) + len + 15) / 16 * 16;

	seg.byte_count = htobe32(len | MLX5_INLINE_SEG);
	memset(buf, 0, total);
	memcpy(buf, &seg, sizeof(seg));
	memcpy(buf + sizeof(seg), data, len);
	return total;
}

/* ---- commands ---- */

static void cmd_ctrl(char **save)
{
	uint8_t buf[16];
	uint16_t pi = num(save, UINT16_MAX);
	uint8_t opcode = num(save, UINT8_MAX);
	uint32_t qpn = num(save, UINT32_MAX);
	uint8_t fm_ce_se = num(save, UINT8_MAX);
	uint8_t ds = num(save, UINT8_MAX);
	uint32_t imm = num(save, UINT32_MAX);

	end_of_line(save);
	print_hex(buf, put_ctrl(buf, pi, opcode, qpn, fm_ce_se, ds, imm));
}

static void cmd_data(char **save)
{
	uint8_t buf[16];
	uint32_t len = num(save, UINT32_MAX);
	uint32_t lkey = num(save, UINT32_MAX);
	uint64_t addr = num(save, UINT64_MAX);

	end_of_line(save);
	print_hex(buf, put_data(buf, len, lkey, addr));
}

static void cmd_raddr(char **save)
{
	uint8_t buf[16];
	uint64_t addr = num(save, UINT64_MAX);
	uint32_t rkey = num(save, UINT32_MAX);

	end_of_line(save);
	print_hex(buf, put_raddr(buf, addr, rkey));
}

static void cmd_atomic(char **save)
{
	uint8_t buf[16];
	uint64_t swap_add = num(save, UINT64_MAX);
	uint64_t compare = num(save, UINT64_MAX);

	end_of_line(save);
	print_hex(buf, put_atomic(buf, swap_add, compare));
}

static void cmd_inline(char **save)
{
	uint8_t data[MAX_WQE_BYTES];
	uint8_t buf[MAX_WQE_BYTES + 16];
	size_t len = unhex(save, data, sizeof(data));

	end_of_line(save);
	print_hex(buf, put_inline(buf, data, len));
}

struct op_name {
	const char *name;
	uint8_t opcode;
};

static const struct op_name ops[] = {
	{ "nop", MLX5_OPCODE_NOP },
	{ "write", MLX5_OPCODE_RDMA_WRITE },
	{ "write_imm", MLX5_OPCODE_RDMA_WRITE_IMM },
	{ "send", MLX5_OPCODE_SEND },
	{ "send_imm", MLX5_OPCODE_SEND_IMM },
	{ "read", MLX5_OPCODE_RDMA_READ },
	{ "cas", MLX5_OPCODE_ATOMIC_CS },
	{ "faa", MLX5_OPCODE_ATOMIC_FA },
};

static void cmd_wqe(char **save)
{
	uint8_t wqe[MAX_WQE_BYTES];
	uint8_t data[MAX_WQE_BYTES];
	const char *name = word(save);
	uint16_t pi = num(save, UINT16_MAX);
	uint32_t qpn = num(save, UINT32_MAX);
	int signaled = num(save, 1);
	int fence = num(save, 1);
	int solicited = num(save, 1);
	uint32_t imm = num(save, UINT32_MAX);
	uint64_t raddr = num(save, UINT64_MAX);
	uint32_t rkey = num(save, UINT32_MAX);
	uint64_t swap = num(save, UINT64_MAX);
	uint64_t compare_add = num(save, UINT64_MAX);
	unsigned nop_bbs = num(save, MAX_WQE_BYTES / MLX5_SEND_WQE_BB);
	const char *mode = word(save);
	uint8_t opcode = 0, fm_ce_se = 0;
	uint32_t ctrl_imm = 0;
	size_t i, size = sizeof(struct mlx5_wqe_ctrl_seg);
	unsigned ds;
	int found = 0;

	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		if (strcmp(name, ops[i].name) == 0) {
			opcode = ops[i].opcode;
			found = 1;
		}
	}
	if (!found)
		die("unknown wqe opcode %s", name);

	memset(wqe, 0, sizeof(wqe));

	/* Remote address, then atomic: the order of _mlx5_post_send (RC). */
	switch (opcode) {
	case MLX5_OPCODE_RDMA_WRITE:
	case MLX5_OPCODE_RDMA_WRITE_IMM:
	case MLX5_OPCODE_RDMA_READ:
		size += put_raddr(wqe + size, raddr, rkey);
		break;
	case MLX5_OPCODE_ATOMIC_CS:
	case MLX5_OPCODE_ATOMIC_FA:
		size += put_raddr(wqe + size, raddr, rkey);
		/* set_atomic_seg(): CS swaps/compares, FA adds compare_add. */
		if (opcode == MLX5_OPCODE_ATOMIC_CS)
			size += put_atomic(wqe + size, swap, compare_add);
		else
			size += put_atomic(wqe + size, compare_add, 0);
		break;
	default:
		break;
	}

	/*
	 * Then the data, as the provider writes it: one data segment per SGE,
	 * skipping zero-length ones (the SGE loop of _mlx5_post_send); an
	 * atomic's result segment always says 8 bytes
	 * (set_data_ptr_seg_atomic); an inline segment only when there are
	 * inline bytes (set_data_inl_seg leaves size 0 for none).
	 */
	if (strcmp(mode, "sge") == 0) {
		unsigned n = num(save, 63);
		int atomic = opcode == MLX5_OPCODE_ATOMIC_CS ||
			     opcode == MLX5_OPCODE_ATOMIC_FA;

		for (i = 0; i < n; i++) {
			uint32_t len = num(save, UINT32_MAX);
			uint32_t lkey = num(save, UINT32_MAX);
			uint64_t addr = num(save, UINT64_MAX);

			if (atomic)
				len = ATOMIC_SIZE;
			else if (len == 0)
				continue;
			if (size + sizeof(struct mlx5_wqe_data_seg) > MAX_WQE_BYTES)
				die("too many SGEs");
			size += put_data(wqe + size, len, lkey, addr);
		}
	} else if (strcmp(mode, "inline") == 0) {
		size_t len = unhex(save, data, sizeof(data));

		if (size + (sizeof(struct mlx5_wqe_inl_data_seg) + len + 15) / 16 * 16 >
		    MAX_WQE_BYTES)
			die("inline data too long");
		if (len > 0)
			size += put_inline(wqe + size, data, len);
	} else {
		die("unknown data mode %s", mode);
	}
	end_of_line(save);

	/* A NOP of NOP_BBS basic blocks: all segments after ctrl zero. */
	if (opcode == MLX5_OPCODE_NOP) {
		if (size != sizeof(struct mlx5_wqe_ctrl_seg))
			die("nop with a payload");
		size = (size_t)nop_bbs * MLX5_SEND_WQE_BB;
	}

	if (opcode == MLX5_OPCODE_RDMA_WRITE_IMM ||
	    opcode == MLX5_OPCODE_SEND_IMM)
		ctrl_imm = imm;
	fm_ce_se = (signaled ? MLX5_WQE_CTRL_CQ_UPDATE : 0) |
		   (fence ? MLX5_WQE_CTRL_FENCE : 0) |
		   (solicited ? MLX5_WQE_CTRL_SOLICITED : 0);
	ds = size / 16;
	put_ctrl(wqe, pi, opcode, qpn, fm_ce_se, ds, ctrl_imm);

	printf("%u %u ", ds,
	       (unsigned)((size + MLX5_SEND_WQE_BB - 1) / MLX5_SEND_WQE_BB));
	print_hex(wqe, size);
}

static void cmd_cqe(char **save)
{
	struct mlx5_cqe64 cqe;
	uint8_t opcode = num(save, 0xf);
	uint8_t owner = num(save, 1);
	uint8_t se = num(save, 1);

	memset(&cqe, 0, sizeof(cqe));
	cqe.srqn_uidx = htobe32(num(save, UINT32_MAX));
	cqe.imm_inval_pkey = htobe32(num(save, UINT32_MAX));
	cqe.byte_cnt = htobe32(num(save, UINT32_MAX));
	cqe.sop_drop_qpn = htobe32(num(save, UINT32_MAX));
	cqe.wqe_counter = htobe16(num(save, UINT16_MAX));
	cqe.wqe_id = htobe16(num(save, UINT16_MAX));
	cqe.ml_path = num(save, UINT8_MAX);
	cqe.slid = htobe16(num(save, UINT16_MAX));
	cqe.flags_rqpn = htobe32(num(save, UINT32_MAX));
	cqe.hds_ip_ext = num(save, UINT8_MAX);
	cqe.l4_hdr_type_etc = num(save, UINT8_MAX);
	cqe.vlan_info = htobe16(num(save, UINT16_MAX));
	cqe.app = num(save, UINT8_MAX);
	cqe.app_op = num(save, UINT8_MAX);
	cqe.app_info = htobe16(num(save, UINT16_MAX));
	cqe.timestamp = htobe64(num(save, UINT64_MAX));
	cqe.signature = num(save, UINT8_MAX);
	end_of_line(save);

	cqe.op_own = (uint8_t)(opcode << 4 | se << 1);
	mlx5dv_set_cqe_owner(&cqe, owner);
	if (mlx5dv_get_cqe_opcode(&cqe) != opcode ||
	    mlx5dv_get_cqe_owner(&cqe) != owner || mlx5dv_get_cqe_se(&cqe) != se ||
	    mlx5dv_get_cqe_format(&cqe) != 0)
		die("op_own 0x%02x does not read back", cqe.op_own);
	print_hex(&cqe, sizeof(cqe));
}

static void cmd_err(char **save)
{
	struct mlx5_err_cqe err;
	uint8_t opcode = num(save, 0xf);
	uint8_t owner = num(save, 1);

	memset(&err, 0, sizeof(err));
	err.srqn = htobe32(num(save, UINT32_MAX));
	err.vendor_err_synd = num(save, UINT8_MAX);
	err.syndrome = num(save, UINT8_MAX);
	err.s_wqe_opcode_qpn = htobe32(num(save, UINT32_MAX));
	err.wqe_counter = htobe16(num(save, UINT16_MAX));
	if (unhex(save, err.rsvd0, sizeof(err.rsvd0)) != sizeof(err.rsvd0))
		die("rsvd0 needs %zu bytes", sizeof(err.rsvd0));
	if (unhex(save, err.rsvd1, sizeof(err.rsvd1)) != sizeof(err.rsvd1))
		die("rsvd1 needs %zu bytes", sizeof(err.rsvd1));
	err.signature = num(save, UINT8_MAX);
	end_of_line(save);

	err.op_own = (uint8_t)(opcode << 4 | (owner & MLX5_CQE_OWNER_MASK));
	print_hex(&err, sizeof(err));
}

static void cmd_owned(char **save)
{
	struct mlx5_cqe64 cqe;
	uint8_t op_own = num(save, UINT8_MAX);
	uint32_t ci = num(save, UINT32_MAX);
	unsigned log_n = num(save, 31);
	uint32_t n = 1u << log_n;

	end_of_line(save);
	memset(&cqe, 0, sizeof(cqe));
	cqe.op_own = op_own;
	/*
	 * get_sw_cqe() in providers/mlx5/cq.c, with n the CQ size
	 * (cq->verbs_cq.cq.cqe + 1).
	 */
	printf("%d", mlx5dv_get_cqe_opcode(&cqe) != MLX5_CQE_INVALID &&
			     !((cqe.op_own & MLX5_CQE_OWNER_MASK) ^ !!(ci & n)));
}

#define C(name) printf(" %s=%llu", #name, (unsigned long long)(name))

static void cmd_consts(char **save)
{
	end_of_line(save);
	C(MLX5_OPCODE_NOP);
	C(MLX5_OPCODE_RDMA_WRITE);
	C(MLX5_OPCODE_RDMA_WRITE_IMM);
	C(MLX5_OPCODE_SEND);
	C(MLX5_OPCODE_SEND_IMM);
	C(MLX5_OPCODE_RDMA_READ);
	C(MLX5_OPCODE_ATOMIC_CS);
	C(MLX5_OPCODE_ATOMIC_FA);
	C(MLX5_WQE_CTRL_CQ_UPDATE);
	C(MLX5_WQE_CTRL_SOLICITED);
	C(MLX5_WQE_CTRL_FENCE);
	C(MLX5_INLINE_SEG);
	C(MLX5_SEND_WQE_BB);
	C(MLX5_CQE_REQ);
	C(MLX5_CQE_RESP_WR_IMM);
	C(MLX5_CQE_RESP_SEND);
	C(MLX5_CQE_RESP_SEND_IMM);
	C(MLX5_CQE_REQ_ERR);
	C(MLX5_CQE_RESP_ERR);
	C(MLX5_CQE_INVALID);
	C(MLX5_CQE_SYNDROME_LOCAL_LENGTH_ERR);
	C(MLX5_CQE_SYNDROME_LOCAL_QP_OP_ERR);
	C(MLX5_CQE_SYNDROME_LOCAL_PROT_ERR);
	C(MLX5_CQE_SYNDROME_WR_FLUSH_ERR);
	C(MLX5_CQE_SYNDROME_MW_BIND_ERR);
	C(MLX5_CQE_SYNDROME_BAD_RESP_ERR);
	C(MLX5_CQE_SYNDROME_LOCAL_ACCESS_ERR);
	C(MLX5_CQE_SYNDROME_REMOTE_INVAL_REQ_ERR);
	C(MLX5_CQE_SYNDROME_REMOTE_ACCESS_ERR);
	C(MLX5_CQE_SYNDROME_REMOTE_OP_ERR);
	C(MLX5_CQE_SYNDROME_TRANSPORT_RETRY_EXC_ERR);
	C(MLX5_CQE_SYNDROME_RNR_RETRY_EXC_ERR);
	C(MLX5_CQE_SYNDROME_REMOTE_ABORTED_ERR);
}

#define OFF(type, field) \
	printf(" %s.%s=%zu", #type, #field, offsetof(struct type, field))
#define SIZE(type) printf(" sizeof.%s=%zu", #type, sizeof(struct type))

static void cmd_layout(char **save)
{
	end_of_line(save);
	SIZE(mlx5_cqe64);
	SIZE(mlx5_err_cqe);
	SIZE(mlx5_wqe_ctrl_seg);
	SIZE(mlx5_wqe_raddr_seg);
	SIZE(mlx5_wqe_atomic_seg);
	SIZE(mlx5_wqe_data_seg);
	SIZE(mlx5_wqe_inl_data_seg);
	OFF(mlx5_cqe64, srqn_uidx);
	OFF(mlx5_cqe64, imm_inval_pkey);
	OFF(mlx5_cqe64, byte_cnt);
	OFF(mlx5_cqe64, sop_drop_qpn);
	OFF(mlx5_cqe64, wqe_counter);
	OFF(mlx5_cqe64, op_own);
	OFF(mlx5_err_cqe, srqn);
	OFF(mlx5_err_cqe, vendor_err_synd);
	OFF(mlx5_err_cqe, syndrome);
	OFF(mlx5_err_cqe, s_wqe_opcode_qpn);
	OFF(mlx5_err_cqe, wqe_counter);
	OFF(mlx5_err_cqe, op_own);
}

static const struct {
	const char *name;
	void (*run)(char **save);
} commands[] = {
	{ "ctrl", cmd_ctrl },	  { "data", cmd_data },	    { "raddr", cmd_raddr },
	{ "atomic", cmd_atomic }, { "inline", cmd_inline }, { "wqe", cmd_wqe },
	{ "cqe", cmd_cqe },	  { "err", cmd_err },	    { "owned", cmd_owned },
	{ "consts", cmd_consts }, { "layout", cmd_layout },
};

static char *read_all(FILE *f)
{
	size_t len = 0, cap = 1 << 16;
	char *buf = malloc(cap);
	size_t got;

	if (!buf)
		die("out of memory");
	while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += got;
		if (cap - len - 1 == 0) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				die("out of memory");
		}
	}
	if (ferror(f))
		die("reading stdin");
	buf[len] = '\0';
	return buf;
}

int main(void)
{
	char *input = read_all(stdin);
	char *line_save = NULL;
	char *line;

	for (line = strtok_r(input, "\n", &line_save); line;
	     line = strtok_r(NULL, "\n", &line_save)) {
		char *save = NULL;
		char *cmd = strtok_r(line, SEP, &save);
		size_t i;
		int found = 0;

		line_no++;
		if (!cmd)
			die("empty line");
		for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
			if (strcmp(cmd, commands[i].name) == 0) {
				commands[i].run(&save);
				found = 1;
				break;
			}
		}
		if (!found)
			die("unknown command %s", cmd);
		putchar('\n');
	}
	free(input);
	if (fflush(stdout) != 0)
		die("writing stdout");
	return 0;
}
