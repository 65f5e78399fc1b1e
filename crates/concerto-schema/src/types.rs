//! A small parser for the Concerto type strings found in schema properties
//! (`Int`, `Array<Option<Address>>`, `Map<String, Any>`, …).

use std::fmt;

/// How deeply generic arguments may nest before a type string is refused. Real schemas nest
/// a handful of levels; the limit only keeps hostile input from exhausting the stack.
pub const MAX_TYPE_DEPTH: usize = 32;

/// The longest type string that is parsed at all.
pub const MAX_TYPE_LEN: usize = 4096;

/// A parsed Concerto type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeExpr {
    /// `String` (also the JSON Schema name `string`).
    String,
    /// `Int` (also `integer`).
    Int,
    /// `Float` (also `number`).
    Float,
    /// `Bool` (also `boolean`).
    Bool,
    /// `Nil` (also `null`).
    Nil,
    /// `Any`: no constraint.
    Any,
    /// `Array<T>`; a bare `Array` / `array` is `Array<Any>`.
    Array(Box<TypeExpr>),
    /// `Map<K, V>`; a bare `Map` / `object` is `Map<String, Any>`.
    Map(Box<TypeExpr>, Box<TypeExpr>),
    /// `Option<T>`: `T` or null, and the field holding it is not required.
    Option(Box<TypeExpr>),
    /// Any other identifier without arguments: a schema, struct or enum name (or unknown).
    Named(String),
    /// An identifier applied to arguments that are not one of the built-in generics
    /// (`Result<T, E>`, `ApiResponse<T>`, …). Not resolved: it carries no constraint.
    Generic(String, Vec<TypeExpr>),
}

/// Why a type string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeParseError {
    /// Byte offset of the problem in the type string.
    pub offset: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for TypeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.message, self.offset)
    }
}

impl std::error::Error for TypeParseError {}

/// Parses a Concerto type string.
///
/// Grammar: `type := ident ( '<' type ( ',' type )* '>' )?`, with whitespace allowed between
/// tokens; identifiers are letters, digits, `_` and `::` path separators. The built-in
/// generics check their argument count (`Array` 1, `Option` 1, `Map` 2).
///
/// # Errors
/// A [`TypeParseError`] for an empty or malformed string, a wrong argument count, nesting
/// deeper than [`MAX_TYPE_DEPTH`] or a string longer than [`MAX_TYPE_LEN`].
pub fn parse_type(text: &str) -> Result<TypeExpr, TypeParseError> {
    if text.len() > MAX_TYPE_LEN {
        return Err(TypeParseError {
            offset: MAX_TYPE_LEN,
            message: format!("type string longer than {MAX_TYPE_LEN} bytes"),
        });
    }
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let ty = parser.parse(0)?;
    parser.skip_ws();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("unexpected text after the type"));
    }
    Ok(ty)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> TypeParseError {
        TypeParseError {
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ident(&mut self) -> Result<&str, TypeParseError> {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b) if b.is_ascii_alphanumeric() || b == b'_' => self.pos += 1,
                Some(b':') if self.bytes.get(self.pos + 1) == Some(&b':') && self.pos > start => {
                    self.pos += 2;
                }
                _ => break,
            }
        }
        let ident = self
            .text
            .get(start..self.pos)
            .ok_or_else(|| self.error("invalid identifier"))?;
        match ident.as_bytes().first() {
            None => Err(self.error("expected a type name")),
            Some(b) if b.is_ascii_digit() => {
                Err(self.error("a type name cannot start with a digit"))
            }
            Some(_) if ident.ends_with(':') => Err(self.error("a type path cannot end with `::`")),
            Some(_) => Ok(ident),
        }
    }

    fn parse(&mut self, depth: usize) -> Result<TypeExpr, TypeParseError> {
        if depth >= MAX_TYPE_DEPTH {
            return Err(self.error("type nests too deeply"));
        }
        self.skip_ws();
        let name = self.ident()?.to_string();
        self.skip_ws();
        let mut args = Vec::new();
        let has_args = self.peek() == Some(b'<');
        if has_args {
            self.pos += 1;
            loop {
                args.push(self.parse(depth + 1)?);
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'>') => {
                        self.pos += 1;
                        break;
                    }
                    Some(_) => return Err(self.error("expected `,` or `>`")),
                    None => return Err(self.error("unclosed `<`")),
                }
            }
        }
        build(&name, args, has_args).map_err(|message| TypeParseError {
            offset: self.pos,
            message,
        })
    }
}

fn build(name: &str, mut args: Vec<TypeExpr>, has_args: bool) -> Result<TypeExpr, String> {
    let arity = |want: usize, args: &Vec<TypeExpr>| {
        if args.len() == want {
            Ok(())
        } else {
            Err(format!(
                "`{name}` takes {want} type argument{}, found {}",
                if want == 1 { "" } else { "s" },
                args.len()
            ))
        }
    };
    let scalar = match name {
        "String" | "string" | "str" => Some(TypeExpr::String),
        "Int" | "integer" | "int" => Some(TypeExpr::Int),
        "Float" | "number" | "float" => Some(TypeExpr::Float),
        "Bool" | "boolean" | "bool" => Some(TypeExpr::Bool),
        "Nil" | "null" | "nil" => Some(TypeExpr::Nil),
        "Any" | "any" => Some(TypeExpr::Any),
        _ => None,
    };
    if let Some(scalar) = scalar {
        return if has_args {
            Err(format!("`{name}` takes no type arguments"))
        } else {
            Ok(scalar)
        };
    }
    match name {
        "Array" | "array" | "List" => {
            if !has_args {
                return Ok(TypeExpr::Array(Box::new(TypeExpr::Any)));
            }
            arity(1, &args)?;
            let item = args.pop().unwrap_or(TypeExpr::Any);
            Ok(TypeExpr::Array(Box::new(item)))
        }
        "Option" => {
            arity(1, &args)?;
            let inner = args.pop().unwrap_or(TypeExpr::Any);
            Ok(TypeExpr::Option(Box::new(inner)))
        }
        "Map" | "HashMap" | "object" => {
            if !has_args {
                return Ok(TypeExpr::Map(
                    Box::new(TypeExpr::String),
                    Box::new(TypeExpr::Any),
                ));
            }
            arity(2, &args)?;
            let value = args.pop().unwrap_or(TypeExpr::Any);
            let key = args.pop().unwrap_or(TypeExpr::Any);
            Ok(TypeExpr::Map(Box::new(key), Box::new(value)))
        }
        _ if has_args => Ok(TypeExpr::Generic(name.to_string(), args)),
        _ => Ok(TypeExpr::Named(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(t: TypeExpr) -> TypeExpr {
        TypeExpr::Array(Box::new(t))
    }
    fn opt(t: TypeExpr) -> TypeExpr {
        TypeExpr::Option(Box::new(t))
    }

    #[test]
    fn scalars_and_aliases() {
        assert_eq!(parse_type("String").unwrap(), TypeExpr::String);
        assert_eq!(parse_type(" Int ").unwrap(), TypeExpr::Int);
        assert_eq!(parse_type("Float").unwrap(), TypeExpr::Float);
        assert_eq!(parse_type("Bool").unwrap(), TypeExpr::Bool);
        assert_eq!(parse_type("Nil").unwrap(), TypeExpr::Nil);
        assert_eq!(parse_type("Any").unwrap(), TypeExpr::Any);
        assert_eq!(parse_type("integer").unwrap(), TypeExpr::Int);
        assert_eq!(parse_type("number").unwrap(), TypeExpr::Float);
        assert_eq!(parse_type("boolean").unwrap(), TypeExpr::Bool);
        assert_eq!(parse_type("null").unwrap(), TypeExpr::Nil);
    }

    #[test]
    fn nested_generics_with_spaces() {
        assert_eq!(
            parse_type("Array<Option<Address>>").unwrap(),
            arr(opt(TypeExpr::Named("Address".into())))
        );
        assert_eq!(
            parse_type("Map< String ,Array<Map<String, Int>> >").unwrap(),
            TypeExpr::Map(
                Box::new(TypeExpr::String),
                Box::new(arr(TypeExpr::Map(
                    Box::new(TypeExpr::String),
                    Box::new(TypeExpr::Int)
                )))
            )
        );
        assert_eq!(
            parse_type("Result<Int, String>").unwrap(),
            TypeExpr::Generic("Result".into(), vec![TypeExpr::Int, TypeExpr::String])
        );
        assert_eq!(
            parse_type("models::Address").unwrap(),
            TypeExpr::Named("models::Address".into())
        );
        assert_eq!(parse_type("Array").unwrap(), arr(TypeExpr::Any));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "   ",
            "<",
            ">",
            "Array<",
            "Array<>",
            "Array<Int",
            "Array<Int>>",
            "Array<Int,>",
            "Map<String>",
            "Option<Int, Int>",
            "Option",
            "Int<String>",
            "1abc",
            "Foo::",
            "::Foo",
            "Foo Bar",
            "Array<Int> x",
            "(Int, String)",
            "fn(Int) -> Int",
            "\u{1F600}",
            "Array<\u{e9}>",
        ] {
            assert!(parse_type(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn depth_and_length_limits() {
        let deep = format!("{}Int{}", "Array<".repeat(10_000), ">".repeat(10_000));
        assert!(parse_type(&deep).is_err());
        let ok = format!("{}Int{}", "Array<".repeat(20), ">".repeat(20));
        assert!(parse_type(&ok).is_ok());
        let deep_small = format!(
            "{}Int{}",
            "Array<".repeat(MAX_TYPE_DEPTH + 1),
            ">".repeat(MAX_TYPE_DEPTH + 1)
        );
        let err = parse_type(&deep_small).unwrap_err();
        assert!(err.message.contains("deeply"), "{err}");
    }
}
