/* A stand-in for libcapstone.so.4 in the router bundle (saves ~1.5 MB compressed): qemu links the
 * disassembler but calls it only to print guest code (-d in_asm, the monitor's x/i), which the
 * router never does. cs_open fails with CS_ERR_ARCH, so qemu would print raw bytes instead. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef size_t csh;

int cs_open(int arch, int mode, csh *handle) { (void)arch; (void)mode; if (handle) *handle = 0; return 2; }
int cs_close(csh *handle) { (void)handle; return 0; }
int cs_option(csh handle, int type, size_t value) { (void)handle; (void)type; (void)value; return 2; }
void *cs_malloc(csh handle) { (void)handle; return NULL; }
bool cs_disasm_iter(csh handle, const uint8_t **code, size_t *size, uint64_t *address, void *insn) {
    (void)handle; (void)code; (void)size; (void)address; (void)insn; return false;
}
