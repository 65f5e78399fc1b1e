//! Tools beyond the program's own code and the outside world: [`ToolHost`], the host-agent
//! [`HostSession`], the `std::fs` and `std::http` requests and replies, and how an outside
//! operation fails ([`OutsideError`]).

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, HostError, Program, ToolSpec};
use crate::value::Value;

/// What a tool returned to a model's call: the value (what a call from code gets, images
/// named by placeholders in its text) and the images themselves.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The tool's result.
    pub value: Value,
    /// The images among its content.
    pub images: Vec<super::ImagePart>,
}

/// Tools beyond the program's own code, the outside world (`std::fs`, `std::http`), and the
/// permission model every tool call goes through: host-registered tools, MCP servers, host
/// agents (external agent processes), files and the network.
///
/// A program's own `tool` declarations run as Concerto code, but [`ToolHost::check`] may
/// still switch them off. Everything that reaches outside the process is denied until the
/// host enables it.
pub trait ToolHost: Send + Sync {
    /// Whether `tool.method` may run (an empty `method`: whether any of its methods may).
    /// `tool` is a Concerto tool, an MCP server, a host agent or a host-registered tool of
    /// `program`. A refusal is [`HostErrorKind::NotEnabled`](super::HostErrorKind::NotEnabled) naming what was denied and how
    /// to allow it.
    fn check(&self, program: &Program, tool: &str, method: &str) -> Result<(), HostError>;

    /// Whether the host registered a tool called `name`.
    fn is_registered(&self, name: &str) -> bool;

    /// Whether the host switched the tool (MCP server, host tool, …) `name` off as a whole
    /// (`--disable-tool NAME`): an agent then goes without it instead of failing.
    fn is_switched_off(&self, name: &str) -> bool;

    /// The functions an external tool provider offers a model: an MCP server of `program`
    /// (by its connection name) or a host-registered tool. Names are `Provider::function`.
    fn specs(
        &self,
        program: &Arc<Program>,
        tool: &str,
    ) -> BoxFuture<Result<Vec<ToolSpec>, HostError>>;

    /// Calls `tool.method(args)` of an MCP server or a host-registered tool, `args` being the
    /// JSON object of named arguments.
    fn call(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: serde_json::Value,
    ) -> BoxFuture<Result<Value, HostError>>;

    /// [`ToolHost::call`] for a model's tool call: the same value, plus the images the
    /// tool returned, which the connection layer passes on to the model. The default has
    /// no images.
    fn call_for_model(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: serde_json::Value,
    ) -> BoxFuture<Result<ToolOutput, HostError>> {
        let call = self.call(program, tool, method, args);
        Box::pin(async move {
            Ok(ToolOutput {
                value: call.await?,
                images: Vec::new(),
            })
        })
    }

    /// One exchange with host agent `program.hosts[host]`: writes `input` (already in the
    /// host's input format) and returns the reply text (already taken from the host's
    /// output format).
    fn host_exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<String, HostError>>;

    /// Opens a streaming session (`listen`) with host agent `program.hosts[host]`: starts the
    /// process if needed (with its init handshake), writes `input` (already in the host's
    /// input format) and hands back the session, from which the agent's messages are read.
    /// The host's timeout bounds the whole session.
    fn host_listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<Arc<dyn HostSession>, HostError>>;

    /// A `std::fs` operation, inside the allowed directories only.
    ///
    /// The error's variant is what the program sees (see [`OutsideError`]): a permitted
    /// operation that fails (file not found) is [`OutsideError::Failed`], an `Err` value; a
    /// refused one is [`OutsideError::Refused`], naming what was denied and how to allow it,
    /// a catchable error; a host failure is [`OutsideError::Host`].
    fn fs(&self, request: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>>;

    /// A `std::http` exchange, to allowed domains only (redirects included); failures as
    /// for [`ToolHost::fs`].
    fn http(&self, request: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>>;
}

/// A streaming session with a host agent, opened by [`ToolHost::host_listen`].
pub trait HostSession: Send + Sync {
    /// The next line the agent wrote, without its line ending; `None` once the agent closed
    /// its output. Fails with [`HostErrorKind::Timeout`](super::HostErrorKind::Timeout) once the session's time is up.
    fn next_line(&self) -> BoxFuture<Result<Option<String>, HostError>>;
    /// Writes one line (a newline is added) to the agent.
    fn send_line(&self, line: String) -> BoxFuture<Result<(), HostError>>;
    /// Ends the session. `clean`: the agent ended it with a terminal message and its process
    /// stays for later calls; otherwise the process is stopped. A session dropped without
    /// `finish` stops the process too.
    fn finish(&self, clean: bool);
}

/// A `std::fs` operation. Paths are as the program wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsRequest {
    /// `read_file(path)`: the text.
    Read(String),
    /// `write_file(path, content)`: create or truncate.
    Write(String, String),
    /// `append_file(path, content)`: create if missing.
    Append(String, String),
    /// `exists(path)`.
    Exists(String),
    /// `list_dir(path)`: entry names.
    ListDir(String),
    /// `remove_file(path)`.
    Remove(String),
    /// `file_size(path)`: bytes.
    Size(String),
}

/// The outcome of a permitted [`FsRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsReply {
    /// Text read.
    Text(String),
    /// Done.
    Done,
    /// A yes/no answer.
    Bool(bool),
    /// Directory entry names.
    Names(Vec<String>),
    /// A size in bytes.
    Size(u64),
}

/// A `std::http` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, `PUT`, `DELETE`, `PATCH` or `HEAD`.
    pub method: String,
    /// Absolute `http`/`https` URL.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<String>,
    /// Time limit of the whole exchange.
    pub timeout: Option<Duration>,
}

/// The reply to an [`HttpRequest`] (any status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body text (lossy UTF-8).
    pub body: String,
}

/// Why a [`ToolHost::fs`] or [`ToolHost::http`] operation gave no reply. Each variant is one
/// way the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideError {
    /// The operation was permitted and attempted, and failed (a file that does not exist, a
    /// connection refused, a time limit): the program receives `Err(message)` as a value.
    Failed(OutsideFailure),
    /// The host's sandbox or permissions refused the operation (a path outside the allowed
    /// directories, a host that is not an allowed domain, `std::fs` switched off). The text
    /// names what was denied and how to allow it; the program sees what a
    /// [`HostError::not_enabled`] with this text becomes: a catchable error of kind
    /// `not_enabled` reading `not enabled: ` and the text.
    Refused(String),
    /// The host could not carry the operation out: the program sees this [`HostError`] as it
    /// sees any other, with the error kind its [`HostErrorKind`](super::HostErrorKind) maps to.
    Host(HostError),
}

/// A permitted outside operation that failed ([`OutsideError::Failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideFailure {
    /// What kind of failure it was (for the host; the program sees only `message`).
    pub kind: OutsideFailureKind,
    /// The text of the program's `Err` value.
    pub message: String,
}

/// The kind of an [`OutsideFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutsideFailureKind {
    /// A file operation failed with this operating-system error kind (`NotFound`,
    /// `IsADirectory`, `InvalidData` for a file that is not UTF-8 text, …).
    Io(std::io::ErrorKind),
    /// The HTTP request cannot be sent as given: the URL is not an absolute `http`/`https`
    /// URL, does not parse, has no host or carries credentials, a header name or value is
    /// invalid, or the method is not supported.
    InvalidRequest,
    /// No reply arrived: the HTTP client could not be set up, the connection could not be
    /// made or broke, or reading the body failed.
    Connection,
    /// A redirect could not be followed: its `Location` was invalid, or there were too many.
    Redirect,
    /// The reply's body was larger than the limit.
    TooLarge,
    /// The request's time limit ran out.
    Timeout,
}

impl OutsideError {
    /// An [`OutsideError::Failed`] of kind `kind`; `message` is the text the program receives.
    pub fn failed(kind: OutsideFailureKind, message: impl Into<String>) -> OutsideError {
        OutsideError::Failed(OutsideFailure {
            kind,
            message: message.into(),
        })
    }

    /// An [`OutsideError::Refused`] naming what was denied and how to allow it.
    pub fn refused(message: impl Into<String>) -> OutsideError {
        OutsideError::Refused(message.into())
    }
}

impl From<HostError> for OutsideError {
    fn from(err: HostError) -> OutsideError {
        OutsideError::Host(err)
    }
}

impl std::fmt::Display for OutsideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutsideError::Failed(failure) => failure.fmt(f),
            OutsideError::Refused(message) => f.write_str(message),
            OutsideError::Host(err) => err.fmt(f),
        }
    }
}

// The text is the inner error's own, so it is not repeated as a source.
impl std::error::Error for OutsideError {}

impl std::fmt::Display for OutsideFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OutsideFailure {}
