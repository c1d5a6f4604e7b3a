//! The few UCP (UCX 1.x) entry points the transfer uses, loaded at run time with `dlopen`
//! so that a machine without UCX still runs (TCP then). Struct prefixes follow
//! `ucp/api/ucp.h` of UCX 1.13; every struct we pass is selected by its `field_mask`, so
//! UCX reads only the leading fields declared here.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

pub type Status = i32; // ucs_status_t
pub type StatusPtr = *mut c_void; // ucs_status_ptr_t
pub type Context = *mut c_void; // ucp_context_h
pub type Worker = *mut c_void; // ucp_worker_h
pub type Ep = *mut c_void; // ucp_ep_h
pub type Config = *mut c_void; // ucp_config_t *
pub type Address = c_void; // ucp_address_t
pub type TagMessage = *mut c_void; // ucp_tag_message_h

pub const UCS_OK: Status = 0;
pub const UCS_INPROGRESS: Status = 1;
const UCS_ERR_LAST: isize = -100;

pub const UCP_API_MAJOR: c_uint = 1;
pub const UCP_API_MINOR: c_uint = 13;

pub const UCP_PARAM_FIELD_FEATURES: u64 = 1 << 0;
pub const UCP_FEATURE_TAG: u64 = 1 << 0;
pub const UCP_EP_PARAM_FIELD_REMOTE_ADDRESS: u64 = 1 << 0;
pub const UCP_EP_PARAM_FIELD_ERR_HANDLER: u64 = 1 << 2;
pub const UCP_EP_CLOSE_FLAG_FORCE: u32 = 1 << 0;
pub const UCP_OP_ATTR_FIELD_FLAGS: u32 = 1 << 2;

/// `ucp_params_t` (prefix).
#[repr(C)]
pub struct Params {
    pub field_mask: u64,
    pub features: u64,
    pub request_size: usize,
    pub request_init: *const c_void,
    pub request_cleanup: *const c_void,
    pub tag_sender_mask: u64,
    pub mt_workers_shared: c_int,
    pub estimated_num_eps: usize,
    pub estimated_num_ppn: usize,
    pub name: *const c_char,
}

/// `ucp_worker_params_t` (prefix; with `field_mask == 0` only that is read).
#[repr(C)]
pub struct WorkerParams {
    pub field_mask: u64,
    pub _rest: [u64; 32],
}

/// `ucp_ep_params_t` (prefix).
#[repr(C)]
pub struct EpParams {
    pub field_mask: u64,
    pub address: *const Address,
    pub err_mode: c_int,
    pub err_handler_cb: *const c_void,
    pub err_handler_arg: *mut c_void,
    pub user_data: *mut c_void,
    pub flags: c_uint,
    pub _rest: [u64; 40],
}

/// `ucp_request_param_t`.
#[repr(C)]
pub struct RequestParam {
    pub op_attr_mask: u32,
    pub flags: u32,
    pub request: *mut c_void,
    pub cb: *const c_void,
    pub datatype: u64,
    pub user_data: *mut c_void,
    pub reply_buffer: *mut c_void,
    pub memory_type: c_int,
    pub recv_info: *mut c_void,
    pub memh: *mut c_void,
}

impl RequestParam {
    /// No callback, contiguous bytes, host memory: completion is polled.
    pub fn polled() -> Self {
        Self {
            op_attr_mask: 0,
            flags: 0,
            request: std::ptr::null_mut(),
            cb: std::ptr::null(),
            datatype: 0,
            user_data: std::ptr::null_mut(),
            reply_buffer: std::ptr::null_mut(),
            memory_type: 0,
            recv_info: std::ptr::null_mut(),
            memh: std::ptr::null_mut(),
        }
    }
}

/// `ucp_tag_recv_info_t`.
#[repr(C)]
#[derive(Default)]
pub struct TagRecvInfo {
    pub sender_tag: u64,
    pub length: usize,
}

/// `UCS_PTR_IS_ERR`.
pub fn ptr_is_err(p: StatusPtr) -> bool {
    (p as usize) >= (UCS_ERR_LAST as usize)
}

/// `UCS_PTR_STATUS` of a pointer that is an error or null.
pub fn ptr_status(p: StatusPtr) -> Status {
    p as isize as Status
}

type FnConfigRead = unsafe extern "C" fn(*const c_char, *const c_char, *mut Config) -> Status;
type FnConfigRelease = unsafe extern "C" fn(Config);
type FnInitVersion =
    unsafe extern "C" fn(c_uint, c_uint, *const Params, Config, *mut Context) -> Status;
type FnCleanup = unsafe extern "C" fn(Context);
type FnWorkerCreate = unsafe extern "C" fn(Context, *const WorkerParams, *mut Worker) -> Status;
type FnWorkerDestroy = unsafe extern "C" fn(Worker);
type FnWorkerGetAddress = unsafe extern "C" fn(Worker, *mut *mut Address, *mut usize) -> Status;
type FnWorkerReleaseAddress = unsafe extern "C" fn(Worker, *mut Address);
type FnWorkerProgress = unsafe extern "C" fn(Worker) -> c_uint;
type FnEpCreate = unsafe extern "C" fn(Worker, *const EpParams, *mut Ep) -> Status;
type FnEpCloseNbx = unsafe extern "C" fn(Ep, *const RequestParam) -> StatusPtr;
type FnTagSendNbx =
    unsafe extern "C" fn(Ep, *const c_void, usize, u64, *const RequestParam) -> StatusPtr;
type FnTagProbeNb = unsafe extern "C" fn(Worker, u64, u64, c_int, *mut TagRecvInfo) -> TagMessage;
type FnTagMsgRecvNbx =
    unsafe extern "C" fn(Worker, *mut c_void, usize, TagMessage, *const RequestParam) -> StatusPtr;
type FnRequestCheckStatus = unsafe extern "C" fn(*mut c_void) -> Status;
type FnRequestFree = unsafe extern "C" fn(*mut c_void);
type FnStatusString = unsafe extern "C" fn(Status) -> *const c_char;

/// The loaded library.
pub struct Lib {
    pub config_read: FnConfigRead,
    pub config_release: FnConfigRelease,
    pub init_version: FnInitVersion,
    pub cleanup: FnCleanup,
    pub worker_create: FnWorkerCreate,
    pub worker_destroy: FnWorkerDestroy,
    pub worker_get_address: FnWorkerGetAddress,
    pub worker_release_address: FnWorkerReleaseAddress,
    pub worker_progress: FnWorkerProgress,
    pub ep_create: FnEpCreate,
    pub ep_close_nbx: FnEpCloseNbx,
    pub tag_send_nbx: FnTagSendNbx,
    pub tag_probe_nb: FnTagProbeNb,
    pub tag_msg_recv_nbx: FnTagMsgRecvNbx,
    pub request_check_status: FnRequestCheckStatus,
    pub request_free: FnRequestFree,
    status_string: Option<FnStatusString>,
}

impl Lib {
    /// Human-readable text of a status.
    pub fn status_text(&self, s: Status) -> String {
        match self.status_string {
            Some(f) => {
                // SAFETY: ucs_status_string returns a static NUL-terminated string for any code.
                let p = unsafe { f(s) };
                if p.is_null() {
                    format!("UCS status {s}")
                } else {
                    // SAFETY: non-null, static, NUL-terminated (see above).
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            }
            None => format!("UCS status {s}"),
        }
    }
}

fn sym<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: `handle` is a live dlopen handle; `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("UCX symbol {name:?} not found"));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is the extern "C" fn pointer type of this symbol as declared in ucp.h
    // (same size as a data pointer on every platform UCX supports).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// Opens `libucp.so.0` (or `libucp.so`); `Err` when UCX is not installed.
pub fn load() -> Result<Lib, String> {
    let mut handle = std::ptr::null_mut();
    for name in [c"libucp.so.0", c"libucp.so"] {
        // SAFETY: dlopen with a NUL-terminated name; the handle is never closed (the
        // library stays loaded for the life of the process).
        handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        return Err("libucp.so.0 not found (install UCX: libucx0 / libucx-dev)".into());
    }
    Ok(Lib {
        config_read: sym(handle, c"ucp_config_read")?,
        config_release: sym(handle, c"ucp_config_release")?,
        init_version: sym(handle, c"ucp_init_version")?,
        cleanup: sym(handle, c"ucp_cleanup")?,
        worker_create: sym(handle, c"ucp_worker_create")?,
        worker_destroy: sym(handle, c"ucp_worker_destroy")?,
        worker_get_address: sym(handle, c"ucp_worker_get_address")?,
        worker_release_address: sym(handle, c"ucp_worker_release_address")?,
        worker_progress: sym(handle, c"ucp_worker_progress")?,
        ep_create: sym(handle, c"ucp_ep_create")?,
        ep_close_nbx: sym(handle, c"ucp_ep_close_nbx")?,
        tag_send_nbx: sym(handle, c"ucp_tag_send_nbx")?,
        tag_probe_nb: sym(handle, c"ucp_tag_probe_nb")?,
        tag_msg_recv_nbx: sym(handle, c"ucp_tag_msg_recv_nbx")?,
        request_check_status: sym(handle, c"ucp_request_check_status")?,
        request_free: sym(handle, c"ucp_request_free")?,
        status_string: sym(handle, c"ucs_status_string").ok(),
    })
}
