//! Links the PAM module (the cdylib) without libgcc_s.so.1.
//!
//! pam_gatepass.so is loaded into every new sshd process, and loading
//! libgcc_s with it (mapping it, relocating it and running its constructor,
//! whose CPUID probes are slow in a VM) cost about as much as loading the
//! module itself. Rust's standard library needs the unwinder (panics are
//! caught before they reach PAM), so it is linked in statically from
//! libgcc_eh.a instead, as `gcc -static-libgcc` does for C++ libraries.
//! rustc asks for `-lgcc_s` on its own; a linker script named
//! `libgcc_s.so`, found first on the module's search path only, turns that
//! into libgcc_eh.a. The module's version script keeps the unwinder's
//! symbols local, so it cannot clash with another copy in the process.
//! The `gatepass-helper` binary and everything else link as before.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return Ok(());
    }
    let dir = PathBuf::from(var("OUT_DIR")).join("static-libgcc");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n")?;
    println!("cargo:rustc-cdylib-link-arg=-static-libgcc");
    println!("cargo:rustc-cdylib-link-arg=-L{}", dir.display());
    Ok(())
}
