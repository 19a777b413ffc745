//! The few system calls the delay line needs, each wrapped once: TUN devices, poll with a nanosecond
//! timeout, non-blocking read/write, timer slack, and waiting for SIGINT/SIGTERM.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0; // _IOW('T', 208, unsigned int)
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// The virtio-net header that precedes each packet on a TUN device opened with offloads.
pub const VNET_HDR_LEN: usize = 10;

/// What a TUN device was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Plain IP packets of at most the MTU.
    None,
    /// TCP segmentation offload: TCP super-packets up to 64 KiB, each behind a virtio-net header the
    /// line passes through unchanged (the receiving kernel takes them as GRO would hand them over).
    Tso,
    /// TSO and UDP segmentation offload (Linux 6.2+): QUIC's GSO batches pass as one packet too.
    TsoUso,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Creates (or attaches to) the layer-3 TUN device `name` without packet information headers; the
/// descriptor is non-blocking. The device lives as long as the descriptor and keeps working after
/// `ip link set NAME netns NS` moves it.
pub fn open_tun(name: &str, offload: bool) -> io::Result<(OwnedFd, Offload)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device name {name:?}: 1 to 15 bytes")));
    }
    // SAFETY: a plain open(2) of a constant NUL-terminated path; the result is checked.
    let fd = check(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let flags = if offload { IFF_TUN | IFF_NO_PI | IFF_VNET_HDR } else { IFF_TUN | IFF_NO_PI };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes), which `IfReq` lays out.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })?;
    if !offload {
        return Ok((fd, Offload::None));
    }
    let set = |f: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes the offload flags as an integer argument.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, f as libc::c_ulong) })
    };
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if set(tso | TUN_F_USO4 | TUN_F_USO6).is_ok() {
        return Ok((fd, Offload::TsoUso));
    }
    set(tso)?;
    Ok((fd, Offload::Tso))
}

/// Waits until `fd` is readable or `timeout` passes (None = forever). Returns whether it is readable.
pub fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as libc::c_long });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd, a valid or null timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut p, 1, tsp, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0 && p.revents & libc::POLLIN != 0)
}

/// One packet into `buf`; Ok(None) when none is waiting.
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as usize))
}

/// One packet out. The kernel takes it or refuses it whole.
pub fn write(fd: &OwnedFd, pkt: &[u8]) -> io::Result<()> {
    // SAFETY: `pkt` is valid for `pkt.len()` bytes of reads.
    let r = unsafe { libc::write(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Timer slack of this thread: the kernel may otherwise wake a sleeper up to 50 µs late.
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// Blocks SIGINT and SIGTERM in this thread (call before spawning, so every thread inherits the mask).
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the signals in `set` (blocked beforehand) and returns it.
pub fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set; `sig` is a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
