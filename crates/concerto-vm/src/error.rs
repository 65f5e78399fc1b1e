//! Runtime errors: what went wrong, where, and whether a Concerto `try` may catch it.

use std::fmt;
use std::sync::Arc;

use concerto_ir::Span;

use crate::value::Value;

/// The category of a runtime error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An operation was applied to values of the wrong type.
    Type,
    /// A name is not defined.
    Name,
    /// Integer division or remainder by zero.
    DivisionByZero,
    /// A struct has no such field.
    Field,
    /// An index is out of bounds.
    Index,
    /// A call could not be made (unknown function, bad callee).
    Call,
    /// A call passed the wrong number of arguments.
    Arity,
    /// `unwrap()` on `Err` or `None`.
    Unwrap,
    /// A value was thrown and nothing caught it.
    Unhandled,
    /// `panic(...)`: ends the program, never caught.
    Panic,
    /// The call-depth limit was exceeded.
    CallDepth,
    /// A resource limit was exceeded (memory, emit queue, …).
    Limit,
    /// The execution timeout expired.
    ExecutionTimeout,
    /// The execution used up its step budget ([`crate::ExecConfig::max_steps`]).
    StepLimit,
    /// An operation's own timeout expired.
    Timeout,
    /// The feature needs a permission the host has not granted.
    NotEnabled,
    /// The feature is not implemented by this runtime or by the plugged-in component.
    Unsupported,
    /// A host component (connection, memory store, emit sink, …) failed.
    Host,
    /// Output did not validate against a schema.
    Schema,
    /// `assert`, `assert_eq` or `assert_ne` failed.
    Assertion,
    /// The execution was cancelled.
    Cancelled,
    /// An internal invariant was broken (a bug in the runtime).
    Internal,
}

impl ErrorKind {
    /// Whether a Concerto `try`/`catch` may handle errors of this kind. Limit breaches,
    /// panics, unsupported features and internal faults end the execution.
    pub fn is_catchable(self) -> bool {
        !matches!(
            self,
            ErrorKind::Panic
                | ErrorKind::CallDepth
                | ErrorKind::Limit
                | ErrorKind::ExecutionTimeout
                | ErrorKind::StepLimit
                | ErrorKind::Unsupported
                | ErrorKind::Cancelled
                | ErrorKind::Internal
                | ErrorKind::Unhandled
        )
    }

    /// A stable snake_case name, used as the `kind` field of caught error values.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Type => "type",
            ErrorKind::Name => "name",
            ErrorKind::DivisionByZero => "division_by_zero",
            ErrorKind::Field => "field",
            ErrorKind::Index => "index",
            ErrorKind::Call => "call",
            ErrorKind::Arity => "arity",
            ErrorKind::Unwrap => "unwrap",
            ErrorKind::Unhandled => "unhandled",
            ErrorKind::Panic => "panic",
            ErrorKind::CallDepth => "call_depth",
            ErrorKind::Limit => "limit",
            ErrorKind::ExecutionTimeout => "execution_timeout",
            ErrorKind::StepLimit => "step_limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NotEnabled => "not_enabled",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Host => "host",
            ErrorKind::Schema => "schema",
            ErrorKind::Assertion => "assertion",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A function name and source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Function name (`main`, `Point::sum`, `Flow::stage`).
    pub function: Arc<str>,
    /// Source position of the instruction (unknown positions are `0:0`).
    pub span: Span,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.span.is_known() {
            write!(
                f,
                "`{}` at {}:{}",
                self.function, self.span.line, self.span.column
            )
        } else {
            write!(f, "`{}`", self.function)
        }
    }
}

/// A runtime error. Small (one pointer) so `Result<_, VmError>` stays cheap on the hot path.
///
/// The message text is for people and may change; match on [`VmError::kind`].
#[derive(Clone)]
pub struct VmError(Box<Inner>);

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: String,
    value: Option<Value>,
    location: Option<Location>,
    trace: Vec<Location>,
    /// Whether `Display` lists the call trace too.
    show_trace: bool,
}

const _: () = assert!(std::mem::size_of::<VmError>() == 8);

impl VmError {
    /// A new error with a complete message (e.g. `type error: cannot add Int and Bool`).
    #[cold]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> VmError {
        VmError(Box::new(Inner {
            kind,
            message: message.into(),
            value: None,
            location: None,
            trace: Vec::new(),
            show_trace: false,
        }))
    }

    /// `type error: <detail>`
    #[cold]
    pub fn type_error(detail: impl fmt::Display) -> VmError {
        VmError::new(ErrorKind::Type, format!("type error: {detail}"))
    }

    /// `name error: undefined variable '<name>'`
    #[cold]
    pub fn undefined(name: &str) -> VmError {
        VmError::new(
            ErrorKind::Name,
            format!("name error: undefined variable '{name}'"),
        )
    }

    /// `call error: <detail>`
    #[cold]
    pub fn call_error(detail: impl fmt::Display) -> VmError {
        VmError::new(ErrorKind::Call, format!("call error: {detail}"))
    }

    /// `index error: index <i> out of bounds (length <n>)`
    #[cold]
    pub fn index_out_of_bounds(idx: i64, len: usize) -> VmError {
        VmError::new(
            ErrorKind::Index,
            format!("index error: index {idx} out of bounds (length {len})"),
        )
    }

    /// `field error: no field '<f>' on <Type>`
    #[cold]
    pub fn no_field(field: &str, type_name: &str) -> VmError {
        VmError::new(
            ErrorKind::Field,
            format!("field error: no field '{field}' on {type_name}"),
        )
    }

    /// `division by zero`
    #[cold]
    pub fn division_by_zero() -> VmError {
        VmError::new(ErrorKind::DivisionByZero, "division by zero")
    }

    /// An error naming a feature this runtime (or a plugged-in component) does not provide.
    #[cold]
    pub fn unsupported(feature: impl fmt::Display) -> VmError {
        VmError::new(ErrorKind::Unsupported, format!("unsupported: {feature}"))
    }

    /// An error for a feature the host has not enabled.
    #[cold]
    pub fn not_enabled(feature: impl fmt::Display) -> VmError {
        VmError::new(ErrorKind::NotEnabled, format!("not enabled: {feature}"))
    }

    /// An error for a thrown value nobody caught: `unhandled error: <display>`.
    #[cold]
    pub fn unhandled(value: Value) -> VmError {
        let mut err = VmError::new(
            ErrorKind::Unhandled,
            format!("unhandled error: {}", value.to_display()),
        );
        err.0.value = Some(value);
        err
    }

    /// The category.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without location.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Whether a Concerto `try` may catch it.
    pub fn is_catchable(&self) -> bool {
        self.0.kind.is_catchable()
    }

    /// Where it happened: function and source span.
    pub fn location(&self) -> Option<&Location> {
        self.0.location.as_ref()
    }

    /// The call stack at the time of the error, innermost first.
    pub fn trace(&self) -> &[Location] {
        &self.0.trace
    }

    /// The thrown value, for [`ErrorKind::Unhandled`] and errors carrying a value.
    pub fn value(&self) -> Option<&Value> {
        self.0.value.as_ref()
    }

    /// This error with its call trace in its `Display` text (one `called from` line per
    /// frame), as `RuntimeConfig::debug` asks.
    pub fn with_trace_shown(mut self) -> VmError {
        self.0.show_trace = true;
        self
    }

    /// Attaches a value that a `catch` receives instead of the default error record.
    pub fn with_value(mut self, value: Value) -> VmError {
        self.0.value = Some(value);
        self
    }

    /// Sets the location unless one is already set.
    pub(crate) fn locate(&mut self, location: Location, trace: Vec<Location>) {
        if self.0.location.is_none() {
            self.0.location = Some(location);
            self.0.trace = trace;
        }
    }

    /// Whether a location is attached.
    pub(crate) fn has_location(&self) -> bool {
        self.0.location.is_some()
    }

    /// The value a Concerto `catch` binds: the attached value, or a
    /// `RuntimeError { kind, message }` record.
    pub fn to_catch_value(&self) -> Value {
        match &self.0.value {
            Some(v) => v.clone(),
            None => Value::record(
                "RuntimeError",
                vec![
                    ("kind", Value::str(self.0.kind.as_str())),
                    ("message", Value::str(self.0.message.as_str())),
                ],
            ),
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if let Some(loc) = &self.0.location {
            write!(f, " (in {loc})")?;
        }
        if self.0.show_trace {
            // The first entry is the failing frame itself, which the location names.
            for frame in self.0.trace.iter().skip(1) {
                write!(f, "\n  called from {frame}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmError")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("location", &self.0.location)
            .finish()
    }
}

impl std::error::Error for VmError {}
