//! `std::crypto`: digests, UUIDs and random bytes (from the host's secure source).

use std::fmt::Write as _;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::builtins::{ret, text_arg};
use crate::error::VmError;
use crate::exec::{Ctx, Flow};
use crate::value::Value;

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `sha256(text)`: lowercase hex.
pub(crate) fn sha256(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::crypto::sha256", args)?;
    ret(Value::str(hex(&Sha256::digest(text.as_bytes()))))
}

/// `md5(text)`: lowercase hex.
pub(crate) fn md5(_: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let text = text_arg("std::crypto::md5", args)?;
    ret(Value::str(hex(&Md5::digest(text.as_bytes()))))
}

/// `uuid()`: a random (v4) UUID, lowercase and hyphenated.
pub(crate) fn uuid(ctx: &mut Ctx, _: &[Value]) -> Result<Flow, VmError> {
    let mut bytes = [0u8; 16];
    ctx.host.system.random_bytes(&mut bytes);
    ret(Value::str(
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string(),
    ))
}

/// `random_bytes(n)`: `2n` lowercase hex characters.
pub(crate) fn random_bytes(ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    let n = match args.first() {
        Some(Value::Int(n)) if (0..=(1 << 20)).contains(n) => *n as usize,
        Some(Value::Int(n)) => {
            return Err(VmError::type_error(format!(
                "std::crypto::random_bytes count {n} is out of range (0..=1048576)"
            )));
        }
        _ => {
            return Err(VmError::type_error(
                "std::crypto::random_bytes expected Int",
            ));
        }
    };
    let mut bytes = vec![0u8; n];
    ctx.host.system.random_bytes(&mut bytes);
    ret(Value::str(hex(&bytes)))
}
