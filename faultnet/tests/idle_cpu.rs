//! Idle connections under latency emulation must sleep, not spin. Alone in its own test binary
//! because it measures the whole process's CPU time, which other tests would add to.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use faultnet::Proxy;

/// Clock ticks per second of /proc's times (USER_HZ, 100 on every Linux ABI).
const TICKS_PER_S: u64 = 100;

/// User plus system CPU time of this process so far, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name (which may hold spaces) start at field 3, the state;
    // utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i - 3].parse().expect("a tick count") };
    field(14) + field(15)
}

#[test]
fn idle_connections_do_not_spin() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone");
                let mut conn = conn;
                let _ = std::io::copy(&mut conn, &mut out);
            });
        }
    });
    let proxy = Proxy::start(addr).expect("start the proxy");
    proxy.set_latency(Duration::from_millis(20));
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        c.write_all(b"x").expect("send");
        let mut back = [0u8; 1];
        c.read_exact(&mut back).expect("echo");
        conns.push(c);
    }
    let idle = Duration::from_secs(1);
    let before = cpu_ticks();
    std::thread::sleep(idle);
    let used = cpu_ticks() - before;
    // 8 connections have 32 proxy threads; spinning, any one of them burns a whole second.
    // Polling every 20 ms costs a few ticks at most.
    let spin_ticks = TICKS_PER_S * idle.as_secs();
    assert!(
        used < spin_ticks / 2,
        "{used} ticks of CPU in {idle:?} idle"
    );
}
