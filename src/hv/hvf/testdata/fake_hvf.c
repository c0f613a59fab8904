/*
 * A stand-in for Hypervisor.framework on Linux, for hvf_test.ts.
 *
 * It exports the functions src/hv/hvf/ffi.ts opens, with the framework's
 * signatures and the rules Apple documents:
 *   - one VM per process (a second hv_vm_create returns HV_BUSY);
 *   - hv_vm_map wants a page-aligned host address and 16 KiB-aligned IPA
 *     and size (the page size of Apple silicon), else HV_BAD_ARGUMENT;
 *   - every hv_vcpu_* call must come from the thread that created the
 *     vCPU ("must be called by the owning thread"); Apple does not say what
 *     a call from another thread returns, and this fake answers
 *     HV_BAD_ARGUMENT and logs "AFFINITY";
 *   - hv_vcpus_exit may come from any thread; it ends a run under way, or
 *     makes the next run return at once, with HV_EXIT_REASON_CANCELED;
 *   - (with -DFAKE_GIC) hv_gic_create only after hv_vm_create and before
 *     any vCPU exists, else HV_ERROR (Apple: "returns an error").
 *
 * Its guest is a script: fake_push_exit() queues, per vCPU, the exits its
 * hv_vcpu_run returns, each optionally after writing one register (as the
 * guest would have). A vCPU with nothing left to do spins: hv_vcpu_run
 * blocks until hv_vcpus_exit. Every call is logged, one line each, with the
 * calling thread's id; fake_log() hands the log over.
 *
 * Built by the test with: gcc -shared -fPIC -Wl,-Bsymbolic [-DFAKE_GIC].
 */

#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* hv_kern_types.h */
typedef uint32_t hv_return_t;
#define HV_SUCCESS 0u
#define HV_ERROR 0xfae94001u
#define HV_BUSY 0xfae94002u
#define HV_BAD_ARGUMENT 0xfae94003u

/* hv_vcpu_types.h */
typedef uint64_t hv_vcpu_t;
typedef struct {
	uint64_t syndrome;
	uint64_t virtual_address;
	uint64_t physical_address;
} hv_vcpu_exit_exception_t;
typedef struct {
	uint32_t reason;
	hv_vcpu_exit_exception_t exception;
} hv_vcpu_exit_t;
#define HV_EXIT_REASON_CANCELED 0u
#define HV_REG_PC 31u
#define HV_REG_COUNT 35u

#define MAX_VCPUS 8
#define MAX_STEPS 32
#define MAX_SYS_REGS 32
#define MAX_MAPS 16
#define LOG_BYTES (1 << 16)
#define IPA_PAGE 0x4000u
#define NO_TARGET 0xffffffffu

struct step {
	uint32_t reason;
	uint64_t syndrome;
	uint64_t ipa;
	uint32_t target; /* an hv_reg_t (< 0x100), an hv_sys_reg_t, or NO_TARGET */
	uint64_t value;
};

struct vcpu {
	bool live;
	pid_t owner;
	uint64_t regs[HV_REG_COUNT];
	uint16_t sys_reg[MAX_SYS_REGS];
	uint64_t sys_val[MAX_SYS_REGS];
	int sys_count;
	hv_vcpu_exit_t exit;
	bool exit_requested;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static bool vm_live;
static int vcpus_made;
static struct vcpu vcpus[MAX_VCPUS];
static struct step steps[MAX_VCPUS][MAX_STEPS];
static int step_count[MAX_VCPUS];
static int step_next[MAX_VCPUS];
static struct { uint64_t ipa, size; } maps[MAX_MAPS];
static int map_count;
static char log_text[LOG_BYTES];
static size_t log_len;
static char fail_fn[64];
static hv_return_t fail_code;

static pid_t tid(void) { return (pid_t)syscall(SYS_gettid); }

/* Appends one line to the log; the lock is held. */
static void record(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(log_text + log_len, LOG_BYTES - log_len, fmt, ap);
	va_end(ap);
	if (n > 0 && log_len + (size_t)n + 1 < LOG_BYTES) {
		log_len += (size_t)n;
		log_text[log_len++] = '\n';
		log_text[log_len] = 0;
	}
}

/* A failure fake_fail_next() asked for; the lock is held. */
static bool injected(const char *fn, hv_return_t *code)
{
	if (strcmp(fail_fn, fn) != 0)
		return false;
	fail_fn[0] = 0;
	*code = fail_code;
	return true;
}

/* The vCPU `v` if it exists and this thread owns it; the lock is held. */
static struct vcpu *owned(const char *fn, hv_vcpu_t v, hv_return_t *code)
{
	if (v >= MAX_VCPUS || !vcpus[v].live) {
		record("%s tid=%d vcpu=%llu NO_VCPU", fn, tid(), (unsigned long long)v);
		*code = HV_BAD_ARGUMENT;
		return NULL;
	}
	if (vcpus[v].owner != tid()) {
		record("%s tid=%d vcpu=%llu AFFINITY owner=%d", fn, tid(),
		     (unsigned long long)v, vcpus[v].owner);
		*code = HV_BAD_ARGUMENT;
		return NULL;
	}
	return &vcpus[v];
}

static uint64_t *sys_slot(struct vcpu *c, uint16_t reg, bool make)
{
	for (int i = 0; i < c->sys_count; i++)
		if (c->sys_reg[i] == reg)
			return &c->sys_val[i];
	if (!make || c->sys_count == MAX_SYS_REGS)
		return NULL;
	c->sys_reg[c->sys_count] = reg;
	c->sys_val[c->sys_count] = 0;
	return &c->sys_val[c->sys_count++];
}

/* --- hv_vm.h ----------------------------------------------------------- */

hv_return_t hv_vm_create(void *config)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	if (!injected("hv_vm_create", &code)) {
		if (config != NULL)
			code = HV_BAD_ARGUMENT;
		else if (vm_live)
			code = HV_BUSY;
		else
			vm_live = true;
	}
	record("hv_vm_create tid=%d ret=0x%x", tid(), code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vm_destroy(void)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	if (!injected("hv_vm_destroy", &code)) {
		bool busy = false;
		for (int i = 0; i < vcpus_made; i++)
			busy |= vcpus[i].live;
		if (!vm_live)
			code = HV_BAD_ARGUMENT;
		else if (busy)
			code = HV_BUSY;
		else {
			vm_live = false;
			map_count = 0;
		}
	}
	record("hv_vm_destroy tid=%d ret=0x%x", tid(), code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vm_map(void *addr, uint64_t ipa, size_t size, uint64_t flags)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	uintptr_t host_page = (uintptr_t)sysconf(_SC_PAGESIZE);
	if (!injected("hv_vm_map", &code)) {
		if (!vm_live)
			code = HV_BAD_ARGUMENT;
		else if ((uintptr_t)addr % host_page || ipa % IPA_PAGE ||
			 size % IPA_PAGE || size == 0 || flags == 0 ||
			 map_count == MAX_MAPS)
			code = HV_BAD_ARGUMENT;
		else {
			maps[map_count].ipa = ipa;
			maps[map_count].size = size;
			map_count++;
		}
	}
	record("hv_vm_map tid=%d ipa=0x%llx size=0x%zx flags=%llu ret=0x%x", tid(),
	     (unsigned long long)ipa, size, (unsigned long long)flags, code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vm_unmap(uint64_t ipa, size_t size)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_BAD_ARGUMENT;
	for (int i = 0; i < map_count; i++) {
		if (maps[i].ipa == ipa && maps[i].size == size) {
			maps[i] = maps[--map_count];
			code = HV_SUCCESS;
			break;
		}
	}
	record("hv_vm_unmap tid=%d ipa=0x%llx size=0x%zx ret=0x%x", tid(),
	     (unsigned long long)ipa, size, code);
	pthread_mutex_unlock(&lock);
	return code;
}

/* --- hv_vcpu.h --------------------------------------------------------- */

hv_return_t hv_vcpu_create(hv_vcpu_t *vcpu, hv_vcpu_exit_t **exit, void *config)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	hv_vcpu_t v = (hv_vcpu_t)vcpus_made;
	if (!injected("hv_vcpu_create", &code)) {
		if (!vm_live || config != NULL || vcpus_made == MAX_VCPUS)
			code = HV_BAD_ARGUMENT;
		else {
			struct vcpu *c = &vcpus[vcpus_made++];
			memset(c, 0, sizeof *c);
			c->live = true;
			c->owner = tid();
			*vcpu = v;
			*exit = &c->exit;
		}
	}
	record("hv_vcpu_create tid=%d vcpu=%llu ret=0x%x", tid(),
	     (unsigned long long)v, code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_destroy(hv_vcpu_t v)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_destroy", v, &code);
	if (c != NULL) {
		c->live = false;
		record("hv_vcpu_destroy tid=%d vcpu=%llu ret=0x0", tid(),
		     (unsigned long long)v);
	}
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_run(hv_vcpu_t v)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_run", v, &code);
	if (c == NULL) {
		pthread_mutex_unlock(&lock);
		return code;
	}
	record("hv_vcpu_run tid=%d vcpu=%llu pc=0x%llx", tid(),
	     (unsigned long long)v, (unsigned long long)c->regs[HV_REG_PC]);
	memset(&c->exit, 0, sizeof c->exit);
	if (!c->exit_requested && step_next[v] < step_count[v]) {
		struct step *s = &steps[v][step_next[v]++];
		if (s->target < HV_REG_COUNT)
			c->regs[s->target] = s->value;
		else if (s->target != NO_TARGET)
			*sys_slot(c, (uint16_t)s->target, true) = s->value;
		c->exit.reason = s->reason;
		c->exit.exception.syndrome = s->syndrome;
		c->exit.exception.physical_address = s->ipa;
		pthread_mutex_unlock(&lock);
		return HV_SUCCESS;
	}
	/* Nothing scripted: the guest spins until the host stops it. */
	while (!c->exit_requested)
		pthread_cond_wait(&wake, &lock);
	c->exit_requested = false;
	c->exit.reason = HV_EXIT_REASON_CANCELED;
	record("hv_vcpu_run tid=%d vcpu=%llu canceled", tid(), (unsigned long long)v);
	pthread_mutex_unlock(&lock);
	return HV_SUCCESS;
}

hv_return_t hv_vcpus_exit(hv_vcpu_t *list, uint32_t count)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	for (uint32_t i = 0; i < count; i++) {
		if (list[i] >= MAX_VCPUS || !vcpus[list[i]].live)
			code = HV_BAD_ARGUMENT;
		else
			vcpus[list[i]].exit_requested = true;
		record("hv_vcpus_exit tid=%d vcpu=%llu", tid(),
		     (unsigned long long)list[i]);
	}
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_get_reg(hv_vcpu_t v, uint32_t reg, uint64_t *value)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_get_reg", v, &code);
	if (c != NULL) {
		if (reg >= HV_REG_COUNT)
			code = HV_BAD_ARGUMENT;
		else
			*value = c->regs[reg];
	}
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_set_reg(hv_vcpu_t v, uint32_t reg, uint64_t value)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_set_reg", v, &code);
	if (c != NULL) {
		if (reg >= HV_REG_COUNT)
			code = HV_BAD_ARGUMENT;
		else
			c->regs[reg] = value;
		record("hv_vcpu_set_reg tid=%d vcpu=%llu reg=%u value=0x%llx ret=0x%x",
		     tid(), (unsigned long long)v, reg, (unsigned long long)value,
		     code);
	}
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_get_sys_reg(hv_vcpu_t v, uint16_t reg, uint64_t *value)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_get_sys_reg", v, &code);
	if (c != NULL) {
		uint64_t *slot = sys_slot(c, reg, false);
		*value = slot == NULL ? 0 : *slot;
	}
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_set_sys_reg(hv_vcpu_t v, uint16_t reg, uint64_t value)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	struct vcpu *c = owned("hv_vcpu_set_sys_reg", v, &code);
	if (c != NULL) {
		uint64_t *slot = sys_slot(c, reg, true);
		if (slot == NULL)
			code = HV_BAD_ARGUMENT;
		else
			*slot = value;
		record("hv_vcpu_set_sys_reg tid=%d vcpu=%llu reg=0x%x value=0x%llx ret=0x%x",
		     tid(), (unsigned long long)v, reg, (unsigned long long)value,
		     code);
	}
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_set_pending_interrupt(hv_vcpu_t v, uint32_t type, bool pending)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	if (owned("hv_vcpu_set_pending_interrupt", v, &code) != NULL)
		record("hv_vcpu_set_pending_interrupt tid=%d vcpu=%llu type=%u pending=%d",
		     tid(), (unsigned long long)v, type, pending);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_vcpu_set_vtimer_mask(hv_vcpu_t v, bool masked)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	if (owned("hv_vcpu_set_vtimer_mask", v, &code) != NULL)
		record("hv_vcpu_set_vtimer_mask tid=%d vcpu=%llu masked=%d", tid(),
		     (unsigned long long)v, masked);
	pthread_mutex_unlock(&lock);
	return code;
}

/* --- hv_gic.h (macOS 15) ------------------------------------------------ */

#ifdef FAKE_GIC
static int gic_config;

void *hv_gic_config_create(void)
{
	pthread_mutex_lock(&lock);
	record("hv_gic_config_create tid=%d", tid());
	pthread_mutex_unlock(&lock);
	return &gic_config;
}

hv_return_t hv_gic_config_set_distributor_base(void *config, uint64_t base)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = config == &gic_config ? HV_SUCCESS : HV_BAD_ARGUMENT;
	record("hv_gic_config_set_distributor_base tid=%d base=0x%llx ret=0x%x",
	     tid(), (unsigned long long)base, code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_gic_config_set_redistributor_base(void *config, uint64_t base)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = config == &gic_config ? HV_SUCCESS : HV_BAD_ARGUMENT;
	record("hv_gic_config_set_redistributor_base tid=%d base=0x%llx ret=0x%x",
	     tid(), (unsigned long long)base, code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_gic_create(void *config)
{
	pthread_mutex_lock(&lock);
	hv_return_t code = HV_SUCCESS;
	bool vcpu_exists = false;
	for (int i = 0; i < vcpus_made; i++)
		vcpu_exists |= vcpus[i].live;
	if (!injected("hv_gic_create", &code)) {
		if (config != &gic_config)
			code = HV_BAD_ARGUMENT;
		else if (!vm_live || vcpu_exists)
			code = HV_ERROR;
	}
	record("hv_gic_create tid=%d ret=0x%x", tid(), code);
	pthread_mutex_unlock(&lock);
	return code;
}

hv_return_t hv_gic_set_spi(uint32_t intid, bool level)
{
	pthread_mutex_lock(&lock);
	record("hv_gic_set_spi tid=%d intid=%u level=%d", tid(), intid, level);
	pthread_mutex_unlock(&lock);
	return HV_SUCCESS;
}
#endif

/* --- the test's handles --------------------------------------------------- */

/* Forgets every VM, vCPU, script and log line. */
void fake_reset(void)
{
	pthread_mutex_lock(&lock);
	vm_live = false;
	vcpus_made = 0;
	memset(vcpus, 0, sizeof vcpus);
	memset(step_count, 0, sizeof step_count);
	memset(step_next, 0, sizeof step_next);
	map_count = 0;
	log_len = 0;
	log_text[0] = 0;
	fail_fn[0] = 0;
	pthread_mutex_unlock(&lock);
}

/* Makes the next call of `fn` return `code` without doing anything. */
void fake_fail_next(const char *fn, hv_return_t code)
{
	pthread_mutex_lock(&lock);
	snprintf(fail_fn, sizeof fail_fn, "%s", fn);
	fail_code = code;
	pthread_mutex_unlock(&lock);
}

/* Queues an exit for the vCPU that will be made `index`-th. */
int fake_push_exit(uint32_t index, uint32_t reason, uint64_t syndrome,
		   uint64_t ipa, uint32_t target, uint64_t value)
{
	pthread_mutex_lock(&lock);
	int ok = index < MAX_VCPUS && step_count[index] < MAX_STEPS;
	if (ok) {
		struct step *s = &steps[index][step_count[index]++];
		s->reason = reason;
		s->syndrome = syndrome;
		s->ipa = ipa;
		s->target = target;
		s->value = value;
	}
	pthread_mutex_unlock(&lock);
	return ok;
}

/* Copies the log (NUL-terminated) into `buf`; returns its length. */
size_t fake_log(char *buf, size_t cap)
{
	pthread_mutex_lock(&lock);
	size_t n = log_len < cap ? log_len : cap - 1;
	memcpy(buf, log_text, n);
	buf[n] = 0;
	pthread_mutex_unlock(&lock);
	return n;
}

/* The calling thread's id, as the log spells it. */
int32_t fake_gettid(void) { return tid(); }

/* A register of vCPU `v`, read without the owning-thread rule. */
uint64_t fake_reg(hv_vcpu_t v, uint32_t reg)
{
	pthread_mutex_lock(&lock);
	uint64_t value = v < MAX_VCPUS && reg < HV_REG_COUNT ? vcpus[v].regs[reg] : 0;
	pthread_mutex_unlock(&lock);
	return value;
}

/* sizeof and offsets of hv_vcpu_exit_t as this compiler lays it out. */
void fake_exit_layout(uint64_t out[5])
{
	out[0] = sizeof(hv_vcpu_exit_t);
	out[1] = offsetof(hv_vcpu_exit_t, reason);
	out[2] = offsetof(hv_vcpu_exit_t, exception.syndrome);
	out[3] = offsetof(hv_vcpu_exit_t, exception.virtual_address);
	out[4] = offsetof(hv_vcpu_exit_t, exception.physical_address);
}
