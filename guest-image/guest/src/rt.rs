//! The guest's runtime: entry point, the mem* functions the compiler calls, port I/O.
//!
//! The host sysroot does not give a freestanding binary `memcpy` and friends, so they are here
//! in assembly (`rep movsb`/`stosb`). The VMM enters `_start` at CPL3 with IOPL=3, RSP at the
//! ABI's stack top, interrupts off. Nothing here may use `cli`, `hlt` or any privileged
//! instruction: on KVM-PVM they fault. It depends on nothing else in the guest (the panic handler
//! is in `panic`).

use core::arch::{asm, global_asm};

global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call {main}",
    "2:  jmp 2b",
    main = sym crate::guest_main,
);

global_asm!(
    ".text",
    ".global memcpy",
    "memcpy:",
    "    mov rax, rdi",
    "    mov rcx, rdx",
    "    rep movsb",
    "    ret",
    ".global memmove",
    "memmove:",
    "    mov rax, rdi",
    "    mov rcx, rdx",
    "    cmp rdi, rsi",
    "    jbe 3f",
    "    lea rsi, [rsi + rdx - 1]",
    "    lea rdi, [rdi + rdx - 1]",
    "    std",
    "    rep movsb",
    "    cld",
    "    ret",
    "3:  rep movsb",
    "    ret",
    ".global memset",
    "memset:",
    "    mov r8, rdi",
    "    mov eax, esi",
    "    mov rcx, rdx",
    "    rep stosb",
    "    mov rax, r8",
    "    ret",
    ".global memcmp",
    ".global bcmp",
    "memcmp:",
    "bcmp:",
    "    xor eax, eax",
    "    test rdx, rdx",
    "    jz 5f",
    "4:  movzx eax, byte ptr [rdi]",
    "    movzx ecx, byte ptr [rsi]",
    "    sub eax, ecx",
    "    jnz 5f",
    "    inc rdi",
    "    inc rsi",
    "    dec rdx",
    "    jnz 4b",
    "5:  ret",
);

/// Debug builds of `core` reference the unwinder's personality even with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// A 32-bit port write. At CPL3 with IOPL=3 this is allowed; it exits to the VMM unless the
/// port is an ioeventfd doorbell.
///
/// # Safety
/// The VMM acts on what is written: for the record ports (`PORT_CONSOLE`, `PORT_SETUP`,
/// `PORT_PHASE`, `PORT_DONE`) `value` must be the address of a live record of that port's type,
/// which the VMM reads and, for setup and phase, writes back during the exit; for a doorbell,
/// the queue it names must be one the device may read and write (see `device::Queue::new`).
#[inline(always)]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches no guest memory itself; what the VMM reads or writes during the exit
    // is the caller's contract above, and the asm is not `nomem`, so the compiler assumes memory
    // may have changed across it.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// A spin-wait hint for polling loops.
#[inline(always)]
pub fn pause() {
    core::hint::spin_loop();
}
