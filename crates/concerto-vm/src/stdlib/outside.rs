//! `std::fs` and `std::http`: the program's reach outside the process, through the host's
//! [`ToolHost`](crate::host::ToolHost) and its sandbox (allowed directories and domains).
//!
//! A refused operation ([`OutsideError::Refused`]) is a catchable error naming what was
//! denied and how to allow it; a permitted operation that fails ([`OutsideError::Failed`]:
//! file not found, connection refused) is an `Err(text)` value, as in the reference runtime;
//! a host failure ([`OutsideError::Host`]) is the error any host failure is. HTTP answers
//! with any status are `Ok(HttpResponse { status, body, headers })`.

use std::time::Duration;

use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::host::{FsReply, FsRequest, HostError, HttpReply, HttpRequest, OutsideError};
use crate::value::Value;

fn text_arg(function: &str, args: &[Value], i: usize) -> Result<String, VmError> {
    match args.get(i) {
        Some(Value::Str(s)) => Ok(s.as_str().to_string()),
        Some(other) => Err(VmError::type_error(format!(
            "std::{function} expected String at arg {i}, got {}",
            other.type_name()
        ))),
        None => Err(VmError::type_error(format!(
            "std::{function} expected String at arg {i}, got nothing"
        ))),
    }
}

/// What the program sees of an outside operation's outcome: `value` of the reply, an `Err`
/// value, or an error (see [`OutsideError`]).
fn outcome<T>(result: Result<T, OutsideError>, value: fn(T) -> Value) -> Result<Value, VmError> {
    match result {
        Ok(reply) => Ok(value(reply)),
        Err(OutsideError::Failed(failure)) => Ok(Value::err(Value::str(failure.message))),
        Err(OutsideError::Refused(message)) => Err(VmError::from(HostError::not_enabled(message))),
        Err(OutsideError::Host(e)) => Err(VmError::from(e)),
    }
}

fn fs_flow(ctx: &Ctx, request: FsRequest) -> Flow {
    let fut = ctx.host.tools.fs(request);
    Flow::Suspend(Box::pin(async move { outcome(fut.await, fs_value) }))
}

fn fs_value(reply: FsReply) -> Value {
    match reply {
        FsReply::Text(t) => Value::ok(Value::str(t)),
        FsReply::Done => Value::ok(Value::Nil),
        // `exists` answers a plain Bool.
        FsReply::Bool(b) => Value::Bool(b),
        FsReply::Names(names) => {
            Value::ok(Value::array(names.into_iter().map(Value::str).collect()))
        }
        FsReply::Size(n) => Value::ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX))),
    }
}

/// `std::fs::read_file(path)`
pub(crate) fn read_file(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::read_file", args, 0)?;
    Ok(fs_flow(ctx, FsRequest::Read(path)))
}

/// `std::fs::write_file(path, content)`
pub(crate) fn write_file(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::write_file", args, 0)?;
    let content = text_arg("fs::write_file", args, 1)?;
    Ok(fs_flow(ctx, FsRequest::Write(path, content)))
}

/// `std::fs::append_file(path, content)`
pub(crate) fn append_file(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::append_file", args, 0)?;
    let content = text_arg("fs::append_file", args, 1)?;
    Ok(fs_flow(ctx, FsRequest::Append(path, content)))
}

/// `std::fs::exists(path)`
pub(crate) fn exists(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::exists", args, 0)?;
    Ok(fs_flow(ctx, FsRequest::Exists(path)))
}

/// `std::fs::list_dir(path)`
pub(crate) fn list_dir(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::list_dir", args, 0)?;
    Ok(fs_flow(ctx, FsRequest::ListDir(path)))
}

/// `std::fs::remove_file(path)`
pub(crate) fn remove_file(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::remove_file", args, 0)?;
    Ok(fs_flow(ctx, FsRequest::Remove(path)))
}

/// `std::fs::file_size(path)`
pub(crate) fn file_size(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let path = text_arg("fs::file_size", args, 0)?;
    Ok(fs_flow(ctx, FsRequest::Size(path)))
}

/// Headers from a Map argument (values by display); anything else means none.
fn headers(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        Some(Value::Map(m)) => m
            .entries()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_display()))
            .collect(),
        _ => Vec::new(),
    }
}

fn http_flow(ctx: &Ctx, mut request: HttpRequest, body: Option<&Value>) -> Flow {
    if let Some(body) = body.filter(|b| !matches!(b, Value::Nil)) {
        request.body = Some(body.to_json().to_string());
        if !request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request
                .headers
                .push(("content-type".into(), "application/json".into()));
        }
    }
    let span = crate::spans::http_call(&request.method, &request.url);
    let fut = ctx.host.tools.http(request);
    Flow::Suspend(Box::pin(async move {
        let result = fut.await;
        match &result {
            Ok(reply) => {
                span.record("http.response.status_code", crate::spans::int(reply.status));
            }
            Err(OutsideError::Failed(_)) => crate::spans::record_error(&span, "request_failed"),
            Err(OutsideError::Refused(_)) => crate::spans::record_error(&span, "not_enabled"),
            Err(OutsideError::Host(e)) => {
                crate::spans::record_error(&span, crate::spans::host_error_type(e.kind));
            }
        }
        drop(span);
        outcome(result, |reply| Value::ok(http_value(reply)))
    }))
}

/// `HttpResponse { status, body, headers }`.
fn http_value(reply: HttpReply) -> Value {
    Value::record(
        "HttpResponse",
        vec![
            ("status", Value::Int(i64::from(reply.status))),
            ("body", Value::str(reply.body)),
            (
                "headers",
                Value::map(reply.headers.into_iter().map(|(k, v)| (k, Value::str(v)))),
            ),
        ],
    )
}

fn request(method: &str, url: String, headers: Vec<(String, String)>) -> HttpRequest {
    HttpRequest {
        method: method.to_string(),
        url,
        headers,
        body: None,
        timeout: None,
    }
}

/// `std::http::get(url, headers?)`
pub(crate) fn get(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let url = text_arg("http::get", args, 0)?;
    Ok(http_flow(
        ctx,
        request("GET", url, headers(args.get(1))),
        None,
    ))
}

/// `std::http::delete(url, headers?)`
pub(crate) fn delete(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let url = text_arg("http::delete", args, 0)?;
    Ok(http_flow(
        ctx,
        request("DELETE", url, headers(args.get(1))),
        None,
    ))
}

/// `std::http::post(url, body?, headers?)`
pub(crate) fn post(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let url = text_arg("http::post", args, 0)?;
    Ok(http_flow(
        ctx,
        request("POST", url, headers(args.get(2))),
        args.get(1),
    ))
}

/// `std::http::put(url, body?, headers?)`
pub(crate) fn put(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let url = text_arg("http::put", args, 0)?;
    Ok(http_flow(
        ctx,
        request("PUT", url, headers(args.get(2))),
        args.get(1),
    ))
}

/// `std::http::request(method, url, body?, headers?, timeout_ms?)`
pub(crate) fn generic(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let method = text_arg("http::request", args, 0)?.to_ascii_uppercase();
    if !matches!(
        method.as_str(),
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD"
    ) {
        return Err(VmError::call_error(format!(
            "unsupported HTTP method: {method}"
        )));
    }
    let url = text_arg("http::request", args, 1)?;
    let mut req = request(&method, url, headers(args.get(3)));
    if let Some(Value::Int(ms)) = args.get(4)
        && *ms > 0
    {
        req.timeout = Some(Duration::from_millis(*ms as u64));
    }
    Ok(http_flow(ctx, req, args.get(2)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::host::OutsideFailureKind;

    fn shown(result: Result<FsReply, OutsideError>) -> Result<Value, VmError> {
        outcome(result, fs_value)
    }

    #[test]
    fn a_failed_operation_is_an_err_value_with_its_message() {
        let failed = OutsideError::failed(
            OutsideFailureKind::Io(std::io::ErrorKind::NotFound),
            "No such file or directory (os error 2)",
        );
        assert_eq!(
            shown(Err(failed)).unwrap(),
            Value::err(Value::str("No such file or directory (os error 2)"))
        );
        assert_eq!(
            shown(Ok(FsReply::Text("hi".into()))).unwrap(),
            Value::ok(Value::str("hi"))
        );
    }

    #[test]
    fn a_refusal_is_a_catchable_not_enabled_error() {
        let err = shown(Err(OutsideError::refused("`/etc` is outside"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotEnabled);
        assert!(err.is_catchable());
        assert_eq!(err.message(), "not enabled: `/etc` is outside");
    }

    #[test]
    fn a_host_failure_is_the_host_errors_own_error() {
        let err = shown(Err(HostError::unsupported("std::fs here").into())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_catchable());
        assert_eq!(err.message(), "unsupported: std::fs here");
        let err = shown(Err(HostError::failed("the pool is gone").into())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Host);
        assert_eq!(err.message(), "the pool is gone");
    }
}
