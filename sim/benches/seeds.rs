//! Simulated seeds per minute for the 1,000-transaction scenario, with its restores and checks.
//! A benchmark, not a test: it prints the figures beside the goal (500 seeds/minute on 2 cores)
//! and asserts nothing.
//!
//! Two figures: one process running seeds back to back (in this benchmark's process), and
//! `sluice-sim sweep --jobs 2`, which runs one worker process per core (a simulation owns
//! SQLite's process-global state, so parallel seeds need processes). `SLUICE_BENCH_SEEDS` sets
//! how many seeds each figure runs (default 40).

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        println!("seeds benchmark: run with `cargo bench -p sluice-sim --bench seeds`");
        return;
    }
    let seeds: u64 = std::env::var("SLUICE_BENCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);

    let started = std::time::Instant::now();
    let (mut commits, mut restores, mut failed) = (0usize, 0u32, 0u32);
    for seed in 0..seeds {
        let r = sluice_sim::run::run(seed, 1000);
        commits += r.commits;
        restores += r.restores;
        failed += u32::from(!r.passed());
    }
    let secs = started.elapsed().as_secs_f64();
    let one = seeds as f64 / secs * 60.0;
    println!(
        "1 process:   {seeds} seeds of 1,000 transactions in {secs:.1} s: {one:.0} seeds/minute, {commits} commits, {restores} restores checked, {failed} failed"
    );

    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-sim"))
        .args(["sweep", "--seeds", &format!("0..{seeds}"), "--jobs", "2"])
        .output();
    let secs = started.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let summary = text.lines().last().unwrap_or("(no output)");
            let two = seeds as f64 / secs * 60.0;
            println!(
                "2 processes: {seeds} seeds in {secs:.1} s: {two:.0} seeds/minute ({summary})"
            );
            println!(
                "goal 500 seeds/minute on 2 cores: ratio {:.2} (one process alone {:.2}; 2 processes over 1: {:.2})",
                two / 500.0,
                one / 500.0,
                two / one
            );
        }
        Err(e) => println!("2 processes: cannot run sluice-sim: {e}"),
    }
}
