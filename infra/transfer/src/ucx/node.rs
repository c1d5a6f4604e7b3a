//! A UCX node: one UCP context and worker owned by a dedicated progress thread (UCP
//! workers are single-threaded). Async code talks to it through commands; every tagged
//! message that arrives is handed out as `(tag, bytes)`.

use super::ffi::{self, Lib};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) type EpId = u64;
type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Cmd {
    Connect {
        addr: Vec<u8>,
        reply: Reply<EpId>,
    },
    Send {
        ep: EpId,
        tag: u64,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    Close {
        ep: EpId,
    },
}

/// A message that arrived.
pub(crate) struct Incoming {
    pub tag: u64,
    pub data: Vec<u8>,
}

/// Handle to a node's progress thread; dropping the last one stops it.
pub(crate) struct Node {
    cmds: std_mpsc::Sender<Cmd>,
    address: Vec<u8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Starts a node; its incoming messages go to the returned channel.
    pub(crate) fn start() -> Result<(Self, mpsc::UnboundedReceiver<Incoming>), String> {
        let lib = ffi::load()?;
        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ucx-progress".into())
            .spawn(move || run(lib, cmd_rx, in_tx, ready_tx, stop2))
            .map_err(|e| format!("spawning the UCX progress thread: {e}"))?;
        let address = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "UCX did not initialise within 10 s".to_string())??;
        Ok((
            Self {
                cmds: cmd_tx,
                address,
                stop,
                thread: Some(thread),
            },
            in_rx,
        ))
    }

    /// This worker's address (what a peer connects to).
    pub(crate) fn address(&self) -> &[u8] {
        &self.address
    }

    pub(crate) async fn connect(&self, addr: Vec<u8>) -> Result<EpId, String> {
        let (reply, rx) = oneshot::channel();
        self.cmd(Cmd::Connect { addr, reply })?;
        rx.await.map_err(|_| "UCX node stopped".to_string())?
    }

    /// Sends `data` with `tag`; resolves once UCX completed the send.
    pub(crate) async fn send(&self, ep: EpId, tag: u64, data: Vec<u8>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmd(Cmd::Send {
            ep,
            tag,
            data,
            reply,
        })?;
        rx.await.map_err(|_| "UCX node stopped".to_string())?
    }

    pub(crate) fn close(&self, ep: EpId) {
        let _ = self.cmd(Cmd::Close { ep });
    }

    fn cmd(&self, c: Cmd) -> Result<(), String> {
        self.cmds
            .send(c)
            .map_err(|_| "UCX node stopped".to_string())?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct PendingSend {
    req: *mut c_void,
    _data: Vec<u8>,
    reply: Reply<()>,
}

struct PendingRecv {
    req: *mut c_void,
    tag: u64,
    data: Vec<u8>,
}

/// The progress thread: owns the context, the worker and every endpoint.
fn run(
    lib: Lib,
    cmds: std_mpsc::Receiver<Cmd>,
    incoming: mpsc::UnboundedSender<Incoming>,
    ready: std_mpsc::Sender<Result<Vec<u8>, String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let (context, worker, address) = match init(&lib) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(address));
    let mut eps: HashMap<EpId, ffi::Ep> = HashMap::new();
    let mut next_ep: EpId = 1;
    let mut sends: Vec<PendingSend> = Vec::new();
    let mut recvs: Vec<PendingRecv> = Vec::new();
    let mut idle = 0u32;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut busy = false;
        loop {
            let cmd = match cmds.try_recv() {
                Ok(c) => c,
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
            };
            busy = true;
            match cmd {
                Cmd::Connect { addr, reply } => {
                    let r = connect(&lib, worker, &addr).map(|ep| {
                        let id = next_ep;
                        next_ep += 1;
                        eps.insert(id, ep);
                        id
                    });
                    let _ = reply.send(r);
                }
                Cmd::Send {
                    ep,
                    tag,
                    data,
                    reply,
                } => match eps.get(&ep) {
                    None => {
                        let _ = reply.send(Err("UCX endpoint is closed".into()));
                    }
                    Some(&ep) => {
                        let param = ffi::RequestParam::polled();
                        // SAFETY: `ep` is live (owned by this thread); `data` stays alive in
                        // `sends` until the request completes; `param` outlives the call.
                        let p = unsafe {
                            (lib.tag_send_nbx)(
                                ep,
                                data.as_ptr() as *const c_void,
                                data.len(),
                                tag,
                                &param,
                            )
                        };
                        if p.is_null() {
                            let _ = reply.send(Ok(()));
                        } else if ffi::ptr_is_err(p) {
                            let s = ffi::ptr_status(p);
                            let _ = reply.send(Err(lib.status_text(s)));
                        } else {
                            sends.push(PendingSend {
                                req: p,
                                _data: data,
                                reply,
                            });
                        }
                    }
                },
                Cmd::Close { ep } => {
                    if let Some(ep) = eps.remove(&ep) {
                        close_ep(&lib, worker, ep);
                    }
                }
            }
        }
        // SAFETY: the worker is owned by this thread.
        while unsafe { (lib.worker_progress)(worker) } > 0 {
            busy = true;
        }
        sends.retain_mut(|s| {
            // SAFETY: `s.req` is a live request returned by tag_send_nbx.
            let st = unsafe { (lib.request_check_status)(s.req) };
            if st == ffi::UCS_INPROGRESS {
                return true;
            }
            // SAFETY: completed request, freed exactly once.
            unsafe { (lib.request_free)(s.req) };
            let (tx, _) = oneshot::channel();
            let reply = std::mem::replace(&mut s.reply, tx);
            let _ = reply.send(if st == ffi::UCS_OK {
                Ok(())
            } else {
                Err(lib.status_text(st))
            });
            busy = true;
            false
        });
        loop {
            let mut info = ffi::TagRecvInfo::default();
            // SAFETY: worker owned by this thread; tag mask 0 matches any message; `info`
            // is written by UCX when a message is returned.
            let msg = unsafe { (lib.tag_probe_nb)(worker, 0, 0, 1, &mut info) };
            if msg.is_null() {
                break;
            }
            busy = true;
            let mut data = vec![0u8; info.length];
            let param = ffi::RequestParam::polled();
            // SAFETY: `msg` was just removed from the unexpected queue by the probe; `data`
            // has `info.length` bytes and stays alive in `recvs` until completion.
            let p = unsafe {
                (lib.tag_msg_recv_nbx)(
                    worker,
                    data.as_mut_ptr() as *mut c_void,
                    data.len(),
                    msg,
                    &param,
                )
            };
            if p.is_null() {
                let _ = incoming.send(Incoming {
                    tag: info.sender_tag,
                    data,
                });
            } else if ffi::ptr_is_err(p) {
                tracing::warn!(
                    "UCX receive failed: {}",
                    lib.status_text(ffi::ptr_status(p))
                );
            } else {
                recvs.push(PendingRecv {
                    req: p,
                    tag: info.sender_tag,
                    data,
                });
            }
        }
        recvs.retain_mut(|r| {
            // SAFETY: live request from tag_msg_recv_nbx.
            let st = unsafe { (lib.request_check_status)(r.req) };
            if st == ffi::UCS_INPROGRESS {
                return true;
            }
            // SAFETY: completed request, freed exactly once.
            unsafe { (lib.request_free)(r.req) };
            if st == ffi::UCS_OK {
                let _ = incoming.send(Incoming {
                    tag: r.tag,
                    data: std::mem::take(&mut r.data),
                });
            } else {
                tracing::warn!("UCX receive failed: {}", lib.status_text(st));
            }
            busy = true;
            false
        });
        if busy {
            idle = 0;
        } else {
            // Spin while traffic is recent (latency), then nap longer the longer the
            // worker stays idle (CPU). No UCX wakeup feature: requesting it makes UCX drop
            // the shared-memory transports, which cannot signal an event fd.
            idle = idle.saturating_add(1);
            match idle {
                0..=2_000 => std::thread::yield_now(),
                2_001..=20_000 => std::thread::sleep(Duration::from_micros(50)),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    for (_, ep) in eps.drain() {
        close_ep(&lib, worker, ep);
    }
    // Requests still in flight are abandoned with the worker.
    for s in sends {
        let _ = s.reply.send(Err("UCX node stopped".into()));
    }
    // SAFETY: no endpoint or request of this worker is used after this point.
    unsafe {
        (lib.worker_destroy)(worker);
        (lib.cleanup)(context);
    }
}

fn init(lib: &Lib) -> Result<(ffi::Context, ffi::Worker, Vec<u8>), String> {
    let mut config: ffi::Config = std::ptr::null_mut();
    // SAFETY: null prefix and file mean "UCX_ environment variables"; `config` is written.
    let s = unsafe { (lib.config_read)(std::ptr::null(), std::ptr::null(), &mut config) };
    if s != ffi::UCS_OK {
        return Err(format!("ucp_config_read: {}", lib.status_text(s)));
    }
    let params = ffi::Params {
        field_mask: ffi::UCP_PARAM_FIELD_FEATURES,
        features: ffi::UCP_FEATURE_TAG,
        request_size: 0,
        request_init: std::ptr::null(),
        request_cleanup: std::ptr::null(),
        tag_sender_mask: 0,
        mt_workers_shared: 0,
        estimated_num_eps: 0,
        estimated_num_ppn: 0,
        name: std::ptr::null(),
    };
    let mut context: ffi::Context = std::ptr::null_mut();
    // SAFETY: params is a valid prefix selected by field_mask; config came from config_read.
    let s = unsafe {
        (lib.init_version)(
            ffi::UCP_API_MAJOR,
            ffi::UCP_API_MINOR,
            &params,
            config,
            &mut context,
        )
    };
    // SAFETY: config is no longer needed after init.
    unsafe { (lib.config_release)(config) };
    if s != ffi::UCS_OK {
        return Err(format!("ucp_init: {}", lib.status_text(s)));
    }
    let wparams = ffi::WorkerParams {
        field_mask: 0,
        _rest: [0; 32],
    };
    let mut worker: ffi::Worker = std::ptr::null_mut();
    // SAFETY: live context; default worker parameters.
    let s = unsafe { (lib.worker_create)(context, &wparams, &mut worker) };
    if s != ffi::UCS_OK {
        // SAFETY: the context is not used again.
        unsafe { (lib.cleanup)(context) };
        return Err(format!("ucp_worker_create: {}", lib.status_text(s)));
    }
    let mut addr: *mut ffi::Address = std::ptr::null_mut();
    let mut len = 0usize;
    // SAFETY: live worker; UCX allocates the address, released below.
    let s = unsafe { (lib.worker_get_address)(worker, &mut addr, &mut len) };
    if s != ffi::UCS_OK || addr.is_null() {
        // SAFETY: neither is used again.
        unsafe {
            (lib.worker_destroy)(worker);
            (lib.cleanup)(context);
        }
        return Err(format!("ucp_worker_get_address: {}", lib.status_text(s)));
    }
    // SAFETY: UCX returned `len` readable bytes at `addr`.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec();
    // SAFETY: releases the address obtained above, once.
    unsafe { (lib.worker_release_address)(worker, addr) };
    Ok((context, worker, bytes))
}

fn connect(lib: &Lib, worker: ffi::Worker, addr: &[u8]) -> Result<ffi::Ep, String> {
    let params = ffi::EpParams {
        // No UCP_ERR_HANDLING_MODE_PEER: it excludes the shared-memory transports (posix,
        // sysv, cma have no peer failure handler), which made same-host transfers fall back
        // to TCP inside UCX. A dead peer is detected by the callers' timeouts instead.
        field_mask: ffi::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | ffi::UCP_EP_PARAM_FIELD_ERR_HANDLER,
        address: addr.as_ptr() as *const ffi::Address,
        err_mode: 0,
        err_handler_cb: on_ep_error as *const c_void,
        err_handler_arg: std::ptr::null_mut(),
        user_data: std::ptr::null_mut(),
        flags: 0,
        _rest: [0; 40],
    };
    let mut ep: ffi::Ep = std::ptr::null_mut();
    // SAFETY: live worker; `addr` is a worker address produced by a peer's
    // ucp_worker_get_address (copied by UCX during the call).
    let s = unsafe { (lib.ep_create)(worker, &params, &mut ep) };
    if s != ffi::UCS_OK {
        return Err(format!("ucp_ep_create: {}", lib.status_text(s)));
    }
    Ok(ep)
}

/// Endpoint failures (peer gone): the requests on it fail and their callers see the
/// error; this only logs.
extern "C" fn on_ep_error(_arg: *mut c_void, _ep: ffi::Ep, status: ffi::Status) {
    tracing::debug!(status, "UCX endpoint failed (peer gone?)");
}

fn close_ep(lib: &Lib, worker: ffi::Worker, ep: ffi::Ep) {
    let mut param = ffi::RequestParam::polled();
    param.op_attr_mask = ffi::UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = ffi::UCP_EP_CLOSE_FLAG_FORCE;
    // SAFETY: live endpoint, closed once.
    let p = unsafe { (lib.ep_close_nbx)(ep, &param) };
    if p.is_null() || ffi::ptr_is_err(p) {
        return;
    }
    for _ in 0..10_000 {
        // SAFETY: live worker and request.
        unsafe { (lib.worker_progress)(worker) };
        // SAFETY: live request from ep_close_nbx.
        if unsafe { (lib.request_check_status)(p) } != ffi::UCS_INPROGRESS {
            break;
        }
    }
    // SAFETY: the close request is freed once (UCX keeps it valid until freed).
    unsafe { (lib.request_free)(p) };
}
