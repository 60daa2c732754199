//! The panic handler: one console line, then the report with `GUEST_ABORTED`.
//!
//! Apart from the runtime (`rt`) so that the runtime depends on nothing above it.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut w = crate::console::Line::new();
    let _ = core::fmt::write(&mut w, format_args!("guest panic: {info}"));
    w.flush();
    crate::report::abort()
}
