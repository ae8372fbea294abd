//! Simulated seeds per minute for the 1,000-transaction scenario, with its restores and checks.
//! A benchmark, not a test: it prints the figure beside the goal (500 seeds/minute on 2 cores)
//! and asserts nothing. `SLUICE_BENCH_SEEDS` sets how many seeds (default 20).

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        println!("seeds benchmark: run with `cargo bench -p sluice-sim --bench seeds`");
        return;
    }
    let seeds: u64 = std::env::var("SLUICE_BENCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let started = std::time::Instant::now();
    let mut commits = 0usize;
    let mut restores = 0u32;
    let mut failed = 0u32;
    for seed in 0..seeds {
        let r = sluice_sim::run::run(seed, 1000);
        commits += r.commits;
        restores += r.restores;
        failed += u32::from(!r.passed());
    }
    let secs = started.elapsed().as_secs_f64();
    let per_minute = seeds as f64 / secs * 60.0;
    println!(
        "{seeds} seeds of 1,000 transactions in {secs:.1} s: {per_minute:.0} seeds/minute (goal 500; ratio {:.2}), {commits} commits, {restores} restores checked, {failed} failed",
        per_minute / 500.0
    );
}
