//! The automatic fallback: a child server whose `io_uring_setup` is denied (a seccomp
//! filter installed in the child before exec, as Docker's default profile does) comes up
//! on the epoll backend and passes echo, HTTP and drain checks.

mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use support::*;

/// One classic BPF instruction, as `struct sock_filter`.
#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K (0x05 | 0x10 | 0x00).
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_RET | BPF_K (0x06 | 0x00).
const BPF_RET_K: u16 = 0x06;
const PR_SET_NO_NEW_PRIVS: i32 = 38;
const PR_SET_SECCOMP: i32 = 22;

/// Makes the command's child fail `io_uring_setup` with EPERM.
fn deny_io_uring(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec. It calls only prctl, which is
    // async-signal-safe; the filter lives on this stack frame while prctl copies it.
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = seccomp_data.nr (offset 0)
                SockFilter {
                    code: BPF_LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                SockFilter {
                    code: BPF_JMP_JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_io_uring_setup as u32,
                },
                SockFilter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                SockFilter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = SockFprog {
                len: filter.len() as u16,
                filter: filter.as_ptr(),
            };
            if libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const SockFprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn echo_falls_back_to_epoll_when_io_uring_is_denied_and_drains_cleanly() {
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
    let mut server = spawn_example("http", &["--workers", "1"], |cmd| {
        cmd.env_remove("GRACERING_BACKEND");
        deny_io_uring(cmd);
    });
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
    let mut cmd = Command::new(example_path("echo"));
    cmd.args(["--addr", "127.0.0.1:0"])
        .env("GRACERING_BACKEND", "uring");
    deny_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring backend unavailable"), "{stderr}");
}
