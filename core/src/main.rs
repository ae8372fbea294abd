//! The `sluice` binary: a thin shell over `sluice_core::cli`.

use clap::Parser;

/// glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so that the
/// upload parts, download chunks and spool buffers (megabytes each, allocated and freed on
/// several threads) come from the heap after the first few and stay resident once freed: a
/// replicator streaming a large snapshot to S3 peaked at 74 MiB instead of 41 MiB
/// (`tests/snapshot_memory.rs`). A fixed threshold of 128 KiB (glibc's initial one) maps
/// every large block and returns it when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_heap_retention() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 128 << 10;
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_heap_retention() {}

fn main() {
    bound_heap_retention();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                // The S3 client logs each retry at info; sluice reports what outlasts them.
                .unwrap_or_else(|_| "info,object_store=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = sluice_core::cli::normalize_args(std::env::args());
    let cli = sluice_core::cli::Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(sluice_core::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
