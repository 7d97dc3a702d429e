//! The automatic fallback: a child server whose `io_uring_setup` is denied (a seccomp
//! filter installed in the child before exec, as Docker's default profile does) comes up
//! on the epoll backend and passes echo, HTTP and drain checks. And the other way round:
//! each run of the suite is on the backend it is meant to test.

mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use gracering::Server;
use support::skip::{Need, skip};
use support::*;

/// Makes the command's child fail `io_uring_setup` with EPERM.
fn deny_io_uring(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec. It calls only prctl, which is
    // async-signal-safe; the filter lives on this stack frame while prctl copies it.
    unsafe {
        cmd.pre_exec(|| {
            let insn = |code: u32, k: u32, jt: u8, jf: u8| libc::BPF_JUMP(code as u16, k, jt, jf);
            let mut filter = [
                // A = seccomp_data.nr
                insn(
                    libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
                    std::mem::offset_of!(libc::seccomp_data, nr) as u32,
                    0,
                    0,
                ),
                // io_uring_setup: fall through to EPERM; anything else: skip to ALLOW.
                insn(
                    libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                    libc::SYS_io_uring_setup as u32,
                    0,
                    1,
                ),
                insn(
                    libc::BPF_RET | libc::BPF_K,
                    libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                    0,
                    0,
                ),
                insn(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a child can be started under the filter; when not, `test` skips (and fails
/// on CI, whose kernel has seccomp filters).
fn can_deny_io_uring(test: &str) -> bool {
    let mut cmd = Command::new(example_path("echo"));
    cmd.arg("--help");
    deny_io_uring(&mut cmd);
    match cmd.output() {
        Ok(_) => true,
        Err(e) => {
            skip(
                test,
                Need::Seccomp,
                format!("cannot install the filter: {e}"),
            );
            false
        }
    }
}

/// CI runs the suite twice, by default (io_uring where the kernel has it) and with
/// `GRACERING_BACKEND=epoll`. A default run that quietly fell back would test epoll
/// twice and io_uring never.
#[test]
fn each_run_is_on_the_backend_it_is_meant_to_test() {
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .handle_signals(false)
        .bind()
        .unwrap();
    let backend = server.backend();
    match std::env::var("GRACERING_BACKEND").as_deref() {
        Ok("epoll") => assert_eq!(backend, "epoll"),
        Ok("uring" | "io_uring") => assert_eq!(backend, "io_uring"),
        _ if backend == "io_uring" => {}
        _ => skip(
            "each_run_is_on_the_backend_it_is_meant_to_test",
            Need::IoUring,
            format!(
                "the default run is on {backend} (the examples' start line, \
                 `RUST_LOG=info`, says why): io_uring is not tested"
            ),
        ),
    }
}

#[test]
fn echo_falls_back_to_epoll_when_io_uring_is_denied_and_drains_cleanly() {
    if !can_deny_io_uring("echo_falls_back_to_epoll_when_io_uring_is_denied_and_drains_cleanly") {
        return;
    }
    let mut server = spawn_example("echo", &["--workers", "2"], |cmd| {
        cmd.env_remove("GRACERING_BACKEND");
        deny_io_uring(cmd);
    });
    assert!(
        server.wait_for_stderr("using the epoll backend", Duration::from_secs(2)),
        "the fallback is logged with its reason: {:?}",
        server.stderr_lines()
    );
    let conns: Vec<_> = (0..50)
        .map(|i| {
            let mut s = connect(server.addr);
            let msg = format!("message {i}");
            assert_eq!(round_trip(&mut s, msg.as_bytes()).unwrap(), msg.as_bytes());
            s
        })
        .collect();
    server.signal(libc::SIGTERM);
    for mut s in conns {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("clean EOF, no reset");
        assert!(rest.is_empty());
    }
    assert_eq!(server.wait_exit(Duration::from_secs(5)).0, Some(0));
    assert!(server.drain_report().contains("\"backend\":\"epoll\""));
}

#[test]
fn http_falls_back_to_epoll_and_serves() {
    if !can_deny_io_uring("http_falls_back_to_epoll_and_serves") {
        return;
    }
    let mut server = spawn_example("http", &["--workers", "1"], |cmd| {
        cmd.env_remove("GRACERING_BACKEND");
        deny_io_uring(cmd);
    });
    assert!(
        server.wait_for_stderr("using the epoll backend", Duration::from_secs(2)),
        "it really fell back: {:?}",
        server.stderr_lines()
    );
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("ready") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("Hello, World!") && text.matches("200 OK").count() == 2,
        "{text}"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(5)).0, Some(0));
}

#[test]
fn forcing_io_uring_where_it_is_denied_is_a_clear_error() {
    if !can_deny_io_uring("forcing_io_uring_where_it_is_denied_is_a_clear_error") {
        return;
    }
    let mut cmd = Command::new(example_path("echo"));
    cmd.args(["--addr", "127.0.0.1:0"])
        .env("GRACERING_BACKEND", "uring");
    deny_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring backend unavailable"), "{stderr}");
}
