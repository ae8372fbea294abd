//! The `sluice` binary: a thin shell over `sluice_core::cli`.

use clap::Parser;

fn main() {
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
