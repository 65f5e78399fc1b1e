//! Runtime values: representation, truthiness, equality, display and JSON conversion.
//!
//! | variant | payload | notes |
//! |---|---|---|
//! | `Nil`, `Bool`, `Int`, `Float` | inline | no allocation |
//! | `Str` | [`Str`] (`Arc<String>`) | immutable while shared; appended in place when unique |
//! | `Array`, `Map` | `Arc<Mutex<…>>` | shared mutable: `a[i] = v` is visible through every alias |
//! | `Struct`, `Enum` | `Arc<…>` | struct fields are mutable in place |
//! | `Ok`, `Err`, `Some` | `Arc<Value>` | `None` is inline |
//! | `Func`, `Builtin`, `Ref` | ids | functions, natives, agents, hashmaps, … |
//! | `Path` | `Arc<str>` | an unresolved path (calling it fails) |
//! | `Object` | `Arc<dyn NativeObject>` | agent builders, tasks |
//!
//! A value is 16 bytes (asserted below) and `Send + Sync`.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use indexmap::IndexMap;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;

/// Insertion-ordered map with string keys, as used by `Map` values.
pub type MapInner = IndexMap<Str, Value, FxBuildHasher>;

/// Maximum nesting depth for display, JSON conversion and equality. Deeper (or cyclic)
/// structures print `...` and compare unequal instead of overflowing the native stack.
pub(crate) const MAX_DEPTH: usize = 128;
/// Nodes written at most by one display or JSON conversion.
pub(crate) const MAX_NODES: usize = 1_000_000;

/// A runtime value.
#[derive(Default)]
pub enum Value {
    /// `nil`
    #[default]
    Nil,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer; arithmetic wraps.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(Str),
    /// A shared mutable array (also tuples and ranges).
    Array(Array),
    /// A shared mutable, insertion-ordered map with string keys.
    Map(Map),
    /// A struct instance (user structs, schema results, built-in records).
    Struct(Arc<StructObj>),
    /// An enum variant of a user enum.
    Enum(Arc<EnumObj>),
    /// `Ok(v)`
    Ok(Arc<Payload>),
    /// `Err(e)`
    Err(Arc<Payload>),
    /// `Some(v)`
    Some(Arc<Payload>),
    /// `None`
    None,
    /// A user function.
    Func(FuncRef),
    /// A built-in function of the interpreter, by id.
    Builtin(u32),
    /// A declared entity (agent, schema, tool, hashmap, …).
    Ref(RefValue),
    /// A path that names nothing known; calling it is an error.
    Path(Str),
    /// A host- or interpreter-defined object (agent builders, async tasks, …).
    Object(Object),
    /// A range of integers (`a..b`, `a..=b`, `a..`), from 7ad10db's `BUILD_RANGE`.
    Range(Arc<Range>),
    /// Marks a local slot that has not been assigned yet. Never visible to programs.
    #[doc(hidden)]
    Unset,
}

const _: () = assert!(std::mem::size_of::<Value>() == 16);

impl Clone for Value {
    /// Scalars copy inline; shared kinds bump a reference count out of line.
    #[inline(always)]
    fn clone(&self) -> Value {
        match self {
            Value::Nil => Value::Nil,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::None => Value::None,
            Value::Func(f) => Value::Func(*f),
            Value::Builtin(b) => Value::Builtin(*b),
            Value::Ref(r) => Value::Ref(*r),
            _ => self.clone_shared(),
        }
    }
}

impl Value {
    #[inline(never)]
    fn clone_shared(&self) -> Value {
        match self {
            Value::Nil => Value::Nil,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Array(a) => Value::Array(a.clone()),
            Value::Map(m) => Value::Map(m.clone()),
            Value::Struct(s) => Value::Struct(s.clone()),
            Value::Enum(e) => Value::Enum(e.clone()),
            Value::Ok(p) => Value::Ok(p.clone()),
            Value::Err(p) => Value::Err(p.clone()),
            Value::Some(p) => Value::Some(p.clone()),
            Value::None => Value::None,
            Value::Func(f) => Value::Func(*f),
            Value::Builtin(b) => Value::Builtin(*b),
            Value::Ref(r) => Value::Ref(*r),
            Value::Path(p) => Value::Path(p.clone()),
            Value::Object(o) => Value::Object(o.clone()),
            Value::Range(r) => Value::Range(r.clone()),
            Value::Unset => Value::Unset,
        }
    }
}

/// A range of integers: `start..end`, `start..=end`, or `start..` when `end` is open.
/// A range is a value of its own: it is never expanded into its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    /// The first integer.
    pub start: i64,
    /// The bound; `None` for an open range (`xs[2..]`).
    pub end: Option<i64>,
    /// Whether `end` itself belongs to the range (`..=`).
    pub inclusive: bool,
}

impl Range {
    /// How many integers the range holds (0 when `end` is before `start`); `None` when open,
    /// or when the count does not fit an `i64` (`i64::MIN..i64::MAX`).
    pub fn len(&self) -> Option<i64> {
        let end = i128::from(self.end?);
        let past = if self.inclusive { end + 1 } else { end };
        i64::try_from((past - i128::from(self.start)).max(0)).ok()
    }

    /// Whether the range holds no integer (an open range never is).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The `i`-th integer of the range, when it has one.
    pub fn get(&self, i: i64) -> Option<i64> {
        if i < 0 {
            return None;
        }
        let v = self.start.checked_add(i)?;
        match self.end {
            Some(end) if v > end || (v == end && !self.inclusive) => None,
            _ => Some(v),
        }
    }

    /// The positions `[from, to)` the range selects in a sequence of `len` elements, clamped
    /// to the sequence (a range past either end selects what overlaps, possibly nothing).
    pub fn clamp(&self, len: usize) -> (usize, usize) {
        let len_i = i64::try_from(len).unwrap_or(i64::MAX);
        let from = self.start.clamp(0, len_i);
        let to = match self.end {
            None => len_i,
            Some(end) => {
                let past = if self.inclusive {
                    end.saturating_add(1)
                } else {
                    end
                };
                past.clamp(0, len_i)
            }
        };
        (from as usize, to.max(from) as usize)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dots = if self.inclusive { "..=" } else { ".." };
        match self.end {
            Some(end) => write!(f, "{}{dots}{end}", self.start),
            None => write!(f, "{}{dots}", self.start),
        }
    }
}

/// A user function of a loaded program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FuncRef {
    /// Registry id of the program (see [`RefValue::program`]).
    pub program: u16,
    /// The function's id in its program.
    pub id: concerto_ir::FuncId,
}

impl FuncRef {
    /// The function's name, when the program is still loaded.
    pub fn name(&self) -> Option<String> {
        registry::function_name(self.program, self.id)
    }
}

/// The kind of a declared entity a [`RefValue`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    /// An agent.
    Agent,
    /// A schema.
    Schema,
    /// A tool.
    Tool,
    /// An MCP server.
    Mcp,
    /// A hashmap.
    Hashmap,
    /// A ledger.
    Ledger,
    /// A conversation memory.
    Memory,
    /// A pipeline.
    Pipeline,
    /// A host agent.
    Host,
}

/// A reference to a declared entity: its kind and its index in the program's section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefValue {
    /// Which section.
    pub kind: RefKind,
    /// Registry id of the program that declares it (for names in display); `u16::MAX` when
    /// unknown.
    pub program: u16,
    /// Index into that section.
    pub index: u32,
}

impl RefValue {
    /// The declared name, when the program is still loaded.
    pub fn name(&self) -> Option<String> {
        registry::name(self.program, self.kind, self.index)
    }
}

/// Names of declared entities per loaded program, so reference values (8 bytes, `Copy`)
/// can still display as `<agent Judge>`.
pub(crate) mod registry {
    use std::sync::Arc;

    use parking_lot::RwLock;

    use super::RefKind;

    /// Names of one program: declared entities by kind (indexed like the program's
    /// sections) and functions (indexed by id).
    pub(crate) struct Names {
        pub(crate) refs: Vec<(RefKind, Vec<String>)>,
        pub(crate) functions: Vec<String>,
    }

    static PROGRAMS: RwLock<Vec<Option<Arc<Names>>>> = RwLock::new(Vec::new());

    /// Registers a program's names; returns its id (`u16::MAX` when the table is full).
    pub(crate) fn register(names: Names) -> u16 {
        let mut programs = PROGRAMS.write();
        let names = Some(Arc::new(names));
        if let Some(idx) = programs.iter().position(Option::is_none) {
            programs[idx] = names;
            return idx as u16;
        }
        if programs.len() >= u16::MAX as usize {
            return u16::MAX;
        }
        programs.push(names);
        (programs.len() - 1) as u16
    }

    /// Frees an id.
    pub(crate) fn unregister(id: u16) {
        if let Some(slot) = PROGRAMS.write().get_mut(id as usize) {
            *slot = None;
        }
    }

    pub(crate) fn name(program: u16, kind: RefKind, index: u32) -> Option<String> {
        let programs = PROGRAMS.read();
        let names = programs.get(program as usize)?.as_ref()?;
        let (_, list) = names.refs.iter().find(|(k, _)| *k == kind)?;
        list.get(index as usize).cloned()
    }

    pub(crate) fn function_name(program: u16, id: concerto_ir::FuncId) -> Option<String> {
        let programs = PROGRAMS.read();
        let names = programs.get(program as usize)?.as_ref()?;
        names.functions.get(id.index()).cloned()
    }
}

/// A handle to a [`NativeObject`] (a thin pointer, so values stay 16 bytes).
#[derive(Clone)]
pub struct Object(pub Arc<Box<dyn NativeObject>>);

impl Object {
    /// Wraps a native object.
    pub fn new(obj: impl NativeObject) -> Object {
        Object(Arc::new(Box::new(obj)))
    }

    /// The object.
    pub fn get(&self) -> &dyn NativeObject {
        &**self.0
    }

    /// The object as a concrete type.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.get().as_any().downcast_ref::<T>()
    }
}

/// An object implemented outside the value model (agent builders, tasks).
pub trait NativeObject: Send + Sync + 'static {
    /// The runtime type name (`typeof`).
    fn type_name(&self) -> &str;
    /// The display form.
    fn display(&self) -> String;
    /// Downcasting support.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A Rust value carried through a suspension of the interpreter (a model reply, a failure, a
/// streaming session): made with [`Value::carry`], read back with [`Value::carried`]. It never
/// reaches a program.
pub(crate) struct Carried<T>(T);

impl<T: Send + Sync + 'static> NativeObject for Carried<T> {
    fn type_name(&self) -> &str {
        "Native"
    }

    fn display(&self) -> String {
        "<native>".into()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An immutable, cheaply cloned string. Appending to a string that no other value shares
/// happens in place (amortised O(1)), which keeps `s = s + piece` loops linear.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Str(Arc<String>);

impl Str {
    /// Wraps a string.
    pub fn new(s: impl Into<String>) -> Str {
        Str(Arc::new(s.into()))
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Appends, in place when this is the only reference; otherwise builds one new string
    /// of the right capacity.
    pub fn push_str(&mut self, tail: &str) {
        match Arc::get_mut(&mut self.0) {
            Some(text) => text.push_str(tail),
            None => {
                let mut text = String::with_capacity(self.0.len() + tail.len());
                text.push_str(&self.0);
                text.push_str(tail);
                self.0 = Arc::new(text);
            }
        }
    }

    /// Mutable access to the text, copying it first when it is shared.
    pub fn make_mut(&mut self) -> &mut String {
        Arc::make_mut(&mut self.0)
    }

    /// The address of the shared text (an identity for caches).
    #[inline]
    pub fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Whether two handles share one allocation.
    pub fn ptr_eq(a: &Str, b: &Str) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl Hash for Str {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state)
    }
}

impl std::borrow::Borrow<str> for Str {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        Str::new(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        Str(Arc::new(s))
    }
}

/// A shared, mutable array.
#[derive(Clone)]
pub struct Array(pub Arc<ArrayCell>);

/// The storage of an [`Array`]; dereferences to its mutex. Dropping it never recurses
/// deeply (see [`drop_deep`]).
pub struct ArrayCell(Mutex<Vec<Value>>);

impl std::ops::Deref for ArrayCell {
    type Target = Mutex<Vec<Value>>;
    fn deref(&self) -> &Mutex<Vec<Value>> {
        &self.0
    }
}

impl Drop for ArrayCell {
    fn drop(&mut self) {
        let items = std::mem::take(self.0.get_mut());
        if !items.is_empty() {
            drop_deep(items);
        }
    }
}

impl Array {
    /// A new array holding `items`.
    pub fn new(items: Vec<Value>) -> Array {
        Array(Arc::new(ArrayCell(Mutex::new(items))))
    }

    /// A snapshot of the elements.
    pub fn to_vec(&self) -> Vec<Value> {
        self.0.lock().clone()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Element `idx`, if in range.
    pub fn get(&self, idx: usize) -> Option<Value> {
        self.0.lock().get(idx).cloned()
    }
}

/// A shared, mutable map with string keys, kept in insertion order.
#[derive(Clone)]
pub struct Map(pub Arc<MapCell>);

/// The storage of a [`Map`]; dereferences to its mutex.
pub struct MapCell(Mutex<MapInner>);

impl std::ops::Deref for MapCell {
    type Target = Mutex<MapInner>;
    fn deref(&self) -> &Mutex<MapInner> {
        &self.0
    }
}

impl Drop for MapCell {
    fn drop(&mut self) {
        let entries = std::mem::take(self.0.get_mut());
        if !entries.is_empty() {
            drop_deep(entries.into_values().collect());
        }
    }
}

impl Map {
    /// A new map holding `entries`.
    pub fn new(entries: MapInner) -> Map {
        Map(Arc::new(MapCell(Mutex::new(entries))))
    }

    /// A map built from pairs (later keys win).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Str, Value)>) -> Map {
        let mut inner = MapInner::default();
        for (k, v) in pairs {
            inner.insert(k, v);
        }
        Map::new(inner)
    }

    /// A snapshot of the entries.
    pub fn entries(&self) -> Vec<(Str, Value)> {
        self.0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.0.lock().get(key).cloned()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// The layout of a struct type: its name and field names.
#[derive(Debug)]
pub struct StructType {
    /// Type name (`Point`, a schema name, `ToolError`, …).
    pub name: Arc<str>,
    /// Field names in declaration order.
    pub fields: Vec<Arc<str>>,
    /// Method-lookup key of the type in its program (`u32::MAX` when it has none).
    pub key: u32,
}

impl StructType {
    /// A new layout without program methods.
    pub fn new(name: impl Into<Arc<str>>, fields: Vec<Arc<str>>) -> Arc<StructType> {
        Arc::new(StructType {
            name: name.into(),
            fields,
            key: u32::MAX,
        })
    }

    /// Index of a field. Interned names usually hit the pointer comparison.
    #[inline]
    pub fn field_index(&self, name: &Arc<str>) -> Option<usize> {
        if let Some(idx) = self.fields.iter().position(|f| Arc::ptr_eq(f, name)) {
            return Some(idx);
        }
        self.fields.iter().position(|f| **f == **name)
    }

    /// Index of a field by text.
    pub fn field_index_str(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| &**f == name)
    }
}

/// A struct instance.
pub struct StructObj {
    /// Its layout.
    pub ty: Arc<StructType>,
    /// Field values, in layout order.
    pub fields: Mutex<Vec<Value>>,
}

impl StructObj {
    /// A new instance; `fields` must follow `ty.fields`.
    pub fn new(ty: Arc<StructType>, fields: Vec<Value>) -> Arc<StructObj> {
        Arc::new(StructObj {
            ty,
            fields: Mutex::new(fields),
        })
    }

    /// A field by name.
    pub fn get(&self, name: &str) -> Option<Value> {
        let idx = self.ty.field_index_str(name)?;
        self.fields.lock().get(idx).cloned()
    }
}

impl Drop for StructObj {
    fn drop(&mut self) {
        let fields = std::mem::take(self.fields.get_mut());
        if !fields.is_empty() {
            drop_deep(fields);
        }
    }
}

/// The payload of `Ok`, `Err` and `Some`; dereferences to the value.
pub struct Payload(Value);

impl Payload {
    /// Wraps a payload.
    pub fn new(value: Value) -> Arc<Payload> {
        Arc::new(Payload(value))
    }
}

impl std::ops::Deref for Payload {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if self.0.is_compound() {
            drop_deep(vec![std::mem::take(&mut self.0)]);
        }
    }
}

/// Drops values without deep native recursion: past a small nesting depth, children are
/// queued and dropped iteratively by the outermost call. Programs can build values nested
/// millions deep (`x = Some(x)` in a loop); dropping them must not overflow the stack.
pub fn drop_deep(values: Vec<Value>) {
    use std::cell::{Cell, RefCell};
    thread_local! {
        static DEPTH: Cell<u32> = const { Cell::new(0) };
        static PENDING: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
    }
    const LIMIT: u32 = 32;
    let depth = DEPTH.with(Cell::get);
    if depth >= LIMIT {
        PENDING.with(|p| p.borrow_mut().extend(values));
        return;
    }
    DEPTH.with(|d| d.set(depth + 1));
    drop(values);
    if depth == 0 {
        // The outermost drop empties the queue; drops it causes queue more, not recurse.
        loop {
            let next = PENDING.with(|p| p.borrow_mut().pop());
            match next {
                Some(v) => drop(v),
                None => break,
            }
        }
    }
    DEPTH.with(|d| d.set(depth));
}

/// An enum variant value of a user enum.
pub struct EnumObj {
    /// Enum type name.
    pub type_name: Arc<str>,
    /// Variant name.
    pub variant: Arc<str>,
    /// Type index in the program.
    pub type_id: u32,
    /// Variant index in the type.
    pub variant_id: u32,
    /// Payload field names for struct-like variants (`None` for tuple and unit variants).
    pub field_names: Option<Vec<Arc<str>>>,
    /// Payload values.
    pub payload: Vec<Value>,
}

impl Drop for EnumObj {
    fn drop(&mut self) {
        let payload = std::mem::take(&mut self.payload);
        if !payload.is_empty() {
            drop_deep(payload);
        }
    }
}

impl Value {
    /// Whether dropping this value may drop other values (containers, results, …).
    #[inline]
    pub fn is_compound(&self) -> bool {
        matches!(
            self,
            Value::Array(_)
                | Value::Map(_)
                | Value::Struct(_)
                | Value::Enum(_)
                | Value::Ok(_)
                | Value::Err(_)
                | Value::Some(_)
        )
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(Str::from(s.into()))
    }

    /// An array value.
    pub fn array(items: Vec<Value>) -> Value {
        Value::Array(Array::new(items))
    }

    /// A copy that shares no array, map or struct with `self`, so later writes to the
    /// original do not show in it (containers nested deeper than 128 levels are shared).
    pub fn deep_copy(&self) -> Value {
        self.deep_copy_depth(0)
    }

    fn deep_copy_depth(&self, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return self.clone();
        }
        match self {
            Value::Array(a) => Value::array(
                a.to_vec()
                    .iter()
                    .map(|v| v.deep_copy_depth(depth + 1))
                    .collect(),
            ),
            Value::Map(m) => Value::Map(Map::from_pairs(
                m.entries()
                    .into_iter()
                    .map(|(k, v)| (k, v.deep_copy_depth(depth + 1))),
            )),
            Value::Struct(s) => {
                let fields = s
                    .fields
                    .lock()
                    .iter()
                    .map(|v| v.deep_copy_depth(depth + 1))
                    .collect();
                Value::Struct(Arc::new(StructObj {
                    ty: s.ty.clone(),
                    fields: Mutex::new(fields),
                }))
            }
            Value::Ok(p) => Value::ok(p.deep_copy_depth(depth + 1)),
            Value::Err(p) => Value::err(p.deep_copy_depth(depth + 1)),
            Value::Some(p) => Value::some(p.deep_copy_depth(depth + 1)),
            other => other.clone(),
        }
    }

    /// `value` carried through a suspension (see [`Carried`]).
    pub(crate) fn carry<T: Send + Sync + 'static>(value: T) -> Value {
        Value::Object(Object::new(Carried(value)))
    }

    /// The value a [`Value::carry`] of a `T` holds.
    pub(crate) fn carried<T: Send + Sync + 'static>(&self) -> Option<&T> {
        match self {
            Value::Object(o) => o.downcast::<Carried<T>>().map(|c| &c.0),
            _ => None,
        }
    }

    /// A map value from pairs.
    pub fn map<K: Into<Str>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(Map::from_pairs(
            pairs.into_iter().map(|(k, v)| (k.into(), v)),
        ))
    }

    /// `Ok(v)`
    pub fn ok(v: Value) -> Value {
        Value::Ok(Payload::new(v))
    }

    /// `Err(e)`
    pub fn err(e: Value) -> Value {
        Value::Err(Payload::new(e))
    }

    /// `Some(v)`
    pub fn some(v: Value) -> Value {
        Value::Some(Payload::new(v))
    }

    /// `Some(v)` or `None`.
    pub fn option(v: Option<Value>) -> Value {
        match v {
            Some(v) => Value::some(v),
            None => Value::None,
        }
    }

    /// A struct of a one-off layout.
    pub fn record(type_name: &str, fields: Vec<(&str, Value)>) -> Value {
        let names = fields.iter().map(|(n, _)| Arc::from(*n)).collect();
        let values = fields.into_iter().map(|(_, v)| v).collect();
        Value::Struct(StructObj::new(StructType::new(type_name, names), values))
    }

    /// Truthiness: `false`, `nil`, `0`, `0.0`, `""`, `[]`, `{}`, `None` and any `Err` are
    /// falsy; everything else is truthy.
    #[inline]
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Nil | Value::None | Value::Err(_) | Value::Unset => false,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Array(a) => !a.0.lock().is_empty(),
            Value::Map(m) => !m.0.lock().is_empty(),
            _ => true,
        }
    }

    /// The runtime type name, as `typeof` reports it and typed `catch` compares it.
    pub fn type_name(&self) -> &str {
        match self {
            Value::Nil | Value::Unset => "Nil",
            Value::Bool(_) => "Bool",
            Value::Int(_) => "Int",
            Value::Float(_) => "Float",
            Value::Str(_) => "String",
            Value::Array(_) => "Array",
            Value::Map(_) => "Map",
            Value::Struct(s) => &s.ty.name,
            Value::Enum(e) => &e.type_name,
            Value::Ok(_) | Value::Err(_) => "Result",
            Value::Some(_) | Value::None => "Option",
            Value::Func(_) | Value::Builtin(_) | Value::Path(_) => "Function",
            Value::Ref(r) => match r.kind {
                RefKind::Agent => "AgentRef",
                RefKind::Schema => "SchemaRef",
                RefKind::Tool => "ToolRef",
                RefKind::Mcp => "McpRef",
                RefKind::Hashmap => "HashMapRef",
                RefKind::Ledger => "LedgerRef",
                RefKind::Memory => "MemoryRef",
                RefKind::Pipeline => "PipelineRef",
                RefKind::Host => "HostRef",
            },
            Value::Object(o) => o.get().type_name(),
            Value::Range(_) => "Range",
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The integer of an `Int` value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A number as f64 (`Int` or `Float`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The string field `name` of a struct or map value (the seed's `payload.get_string`).
    pub fn get_string(&self, name: &str) -> Option<String> {
        match self.get_field(name)? {
            Value::Str(s) => Some(s.to_string()),
            _ => None,
        }
    }

    /// Field `name` of a struct or map value.
    pub fn get_field(&self, name: &str) -> Option<Value> {
        match self {
            Value::Struct(s) => s.get(name),
            Value::Map(m) => m.get(name),
            _ => None,
        }
    }

    /// The display string (used by `print`, interpolation, `as String`, map keys, prompts).
    pub fn to_display(&self) -> String {
        match self {
            Value::Str(s) => s.to_string(),
            _ => {
                let mut out = String::new();
                self.write_display(&mut out, 0);
                out
            }
        }
    }

    /// Appends the display string to `out`.
    pub fn write_display(&self, out: &mut String, depth: usize) {
        let mut budget = MAX_NODES;
        self.write_display_in(out, depth, &mut budget);
    }

    /// `write_display` with a budget of nodes: a value that shares containers (or contains
    /// itself) can be exponentially large when written out; past the budget the rest is `...`.
    fn write_display_in(&self, out: &mut String, depth: usize, budget: &mut usize) {
        if depth > MAX_DEPTH || *budget == 0 {
            out.push_str("...");
            return;
        }
        *budget -= 1;
        match self {
            Value::Nil | Value::Unset => out.push_str("nil"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Value::Float(f) => write_float_display(out, *f),
            Value::Str(s) => out.push_str(s),
            Value::Array(a) => {
                let items = a.to_vec();
                out.push('[');
                for (idx, item) in items.iter().enumerate() {
                    if idx > 0 {
                        out.push_str(", ");
                    }
                    item.write_display_in(out, depth + 1, budget);
                }
                out.push(']');
            }
            Value::Map(m) => {
                let entries = m.entries();
                out.push('{');
                for (idx, (k, v)) in entries.iter().enumerate() {
                    if idx > 0 {
                        out.push_str(", ");
                    }
                    out.push('"');
                    out.push_str(k);
                    out.push_str("\": ");
                    v.write_display_in(out, depth + 1, budget);
                }
                out.push('}');
            }
            Value::Struct(s) => {
                let fields = s.fields.lock().clone();
                out.push_str(&s.ty.name);
                write_fields(out, &s.ty.fields, &fields, depth, budget);
            }
            Value::Enum(e) => {
                out.push_str(&e.type_name);
                out.push_str("::");
                out.push_str(&e.variant);
                match &e.field_names {
                    Some(names) => write_fields(out, names, &e.payload, depth, budget),
                    None if e.payload.is_empty() => {}
                    None => {
                        out.push('(');
                        for (idx, v) in e.payload.iter().enumerate() {
                            if idx > 0 {
                                out.push_str(", ");
                            }
                            v.write_display_in(out, depth + 1, budget);
                        }
                        out.push(')');
                    }
                }
            }
            Value::Ok(v) => wrap_display(out, "Ok", v, depth, budget),
            Value::Err(v) => wrap_display(out, "Err", v, depth, budget),
            Value::Some(v) => wrap_display(out, "Some", v, depth, budget),
            Value::None => out.push_str("None"),
            Value::Func(f) => match f.name() {
                Some(name) => {
                    let _ = write!(out, "<fn {name}>");
                }
                None => {
                    let _ = write!(out, "<fn #{}>", f.id.get());
                }
            },
            Value::Builtin(id) => {
                let _ = write!(out, "<fn {}>", crate::builtins::builtin_name(*id));
            }
            Value::Path(p) => {
                let _ = write!(out, "<fn {p}>");
            }
            Value::Ref(r) => match r.name() {
                Some(name) => {
                    let _ = write!(out, "<{} {name}>", ref_label(r.kind));
                }
                None => {
                    let _ = write!(out, "<{} #{}>", ref_label(r.kind), r.index);
                }
            },
            Value::Object(o) => out.push_str(&o.get().display()),
            Value::Range(r) => {
                let _ = write!(out, "{r}");
            }
        }
    }

    /// Converts to JSON as emit sinks and `std::json::stringify` do: structs become objects
    /// of their fields, `Ok`/`Err`/`Some` become `{"Ok": v}` …, `None` and `nil` become
    /// `null`, non-finite floats become `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut budget = MAX_NODES;
        self.to_json_depth(0, &mut budget)
    }

    /// `to_json` below `depth`, with a budget of nodes as in `write_display_in`.
    fn to_json_depth(&self, depth: usize, budget: &mut usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > MAX_DEPTH || *budget == 0 {
            return J::String("...".into());
        }
        *budget -= 1;
        match self {
            Value::Nil | Value::None | Value::Unset => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.to_string()),
            Value::Array(a) => J::Array(
                a.to_vec()
                    .iter()
                    .map(|v| v.to_json_depth(depth + 1, budget))
                    .collect(),
            ),
            Value::Map(m) => J::Object(
                m.entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_json_depth(depth + 1, budget)))
                    .collect(),
            ),
            Value::Struct(s) => {
                let fields = s.fields.lock().clone();
                J::Object(
                    s.ty.fields
                        .iter()
                        .zip(fields)
                        .map(|(k, v)| (k.to_string(), v.to_json_depth(depth + 1, budget)))
                        .collect(),
                )
            }
            Value::Enum(e) => {
                let payload = match (&e.field_names, e.payload.len()) {
                    (None, 0) => return J::String(e.variant.to_string()),
                    (Some(names), _) => J::Object(
                        names
                            .iter()
                            .zip(&e.payload)
                            .map(|(k, v)| (k.to_string(), v.to_json_depth(depth + 1, budget)))
                            .collect(),
                    ),
                    (None, 1) => e.payload[0].to_json_depth(depth + 1, budget),
                    (None, _) => J::Array(
                        e.payload
                            .iter()
                            .map(|v| v.to_json_depth(depth + 1, budget))
                            .collect(),
                    ),
                };
                let mut obj = serde_json::Map::new();
                obj.insert(e.variant.to_string(), payload);
                J::Object(obj)
            }
            Value::Ok(v) => tagged_json("Ok", v, depth, budget),
            Value::Err(v) => tagged_json("Err", v, depth, budget),
            Value::Some(v) => tagged_json("Some", v, depth, budget),
            Value::Range(r) => {
                let mut obj = serde_json::Map::new();
                obj.insert("start".into(), J::from(r.start));
                obj.insert("end".into(), r.end.map_or(J::Null, J::from));
                obj.insert("inclusive".into(), J::Bool(r.inclusive));
                J::Object(obj)
            }
            other => J::String(other.to_display()),
        }
    }

    /// Converts JSON to a value: integers → `Int`, other numbers → `Float`, objects → `Map`,
    /// arrays → `Array`, `null` → `nil`.
    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Nil,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::str(s.as_str()),
            J::Array(items) => Value::array(items.iter().map(Value::from_json).collect()),
            J::Object(obj) => {
                let mut inner = MapInner::with_capacity_and_hasher(obj.len(), FxBuildHasher);
                for (k, v) in obj {
                    inner.insert(Str::from(k.as_str()), Value::from_json(v));
                }
                Value::Map(Map::new(inner))
            }
        }
    }

    /// Structural equality: numbers compare numerically across Int and Float, containers
    /// element-wise, maps as maps (key order does not matter), structs by type and fields,
    /// references by identity; a value of a tuple enum variant equals that variant's
    /// constructor (how 7ad10db compiles a variant pattern).
    pub fn equals(&self, other: &Value) -> bool {
        self.equals_depth(other, 0)
    }

    fn equals_depth(&self, other: &Value, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match (self, other) {
            (Value::Nil, Value::Nil) | (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => {
                (*a as f64) == *b
            }
            (Value::Str(a), Value::Str(b)) => a.as_str() == b.as_str(),
            (Value::Array(a), Value::Array(b)) => {
                if Arc::ptr_eq(&a.0, &b.0) {
                    return true;
                }
                let (a, b) = (a.to_vec(), b.to_vec());
                a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.equals_depth(y, depth + 1))
            }
            (Value::Map(a), Value::Map(b)) => {
                if Arc::ptr_eq(&a.0, &b.0) {
                    return true;
                }
                let (a, b) = (a.entries(), b.entries());
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .any(|(k2, v2)| k == k2 && v.equals_depth(v2, depth + 1))
                    })
            }
            (Value::Struct(a), Value::Struct(b)) => {
                if Arc::ptr_eq(a, b) {
                    return true;
                }
                if a.ty.name != b.ty.name || a.ty.fields.len() != b.ty.fields.len() {
                    return false;
                }
                let (fa, fb) = (a.fields.lock().clone(), b.fields.lock().clone());
                a.ty.fields
                    .iter()
                    .zip(&fa)
                    .all(|(name, v)| match b.ty.field_index(name) {
                        Some(idx) => v.equals_depth(&fb[idx], depth + 1),
                        None => false,
                    })
            }
            (Value::Enum(a), Value::Enum(b)) => {
                a.type_id == b.type_id
                    && a.variant_id == b.variant_id
                    && a.payload.len() == b.payload.len()
                    && a.payload
                        .iter()
                        .zip(&b.payload)
                        .all(|(x, y)| x.equals_depth(y, depth + 1))
            }
            (Value::Ok(a), Value::Ok(b))
            | (Value::Err(a), Value::Err(b))
            | (Value::Some(a), Value::Some(b)) => a.equals_depth(b, depth + 1),
            (Value::Func(a), Value::Func(b)) => a == b,
            (Value::Builtin(a), Value::Builtin(b)) => a == b,
            (Value::Path(a), Value::Path(b)) => a == b,
            (Value::Ref(a), Value::Ref(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => Arc::ptr_eq(&a.0, &b.0),
            (Value::Range(a), Value::Range(b)) => a == b,
            // A value of a tuple variant equals that variant's constructor: 7ad10db compiles
            // the pattern `Shape::Circle(r)` as `value == Shape::Circle`.
            (Value::Enum(e), Value::Builtin(id)) | (Value::Builtin(id), Value::Enum(e)) => {
                crate::builtins::enum_ctor_of(*id) == Some((e.type_id, e.variant_id))
            }
            _ => false,
        }
    }
}

/// ` {name: v, …}` after a struct or variant name.
fn write_fields(
    out: &mut String,
    names: &[Arc<str>],
    values: &[Value],
    depth: usize,
    budget: &mut usize,
) {
    out.push_str(" {");
    for (idx, (name, v)) in names.iter().zip(values).enumerate() {
        if idx > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str(": ");
        v.write_display_in(out, depth + 1, budget);
    }
    out.push('}');
}

fn wrap_display(out: &mut String, tag: &str, inner: &Value, depth: usize, budget: &mut usize) {
    out.push_str(tag);
    out.push('(');
    inner.write_display_in(out, depth + 1, budget);
    out.push(')');
}

fn tagged_json(tag: &str, inner: &Value, depth: usize, budget: &mut usize) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    obj.insert(tag.to_string(), inner.to_json_depth(depth + 1, budget));
    serde_json::Value::Object(obj)
}

/// Writes a float the way Concerto displays it: shortest round-trip digits, no exponent,
/// no trailing `.0`, `inf`, `-inf`, `NaN`.
pub(crate) fn write_float_display(out: &mut String, f: f64) {
    let _ = write!(out, "{f}");
}

fn ref_label(kind: RefKind) -> &'static str {
    match kind {
        RefKind::Agent => "agent",
        RefKind::Schema => "schema",
        RefKind::Tool => "tool",
        RefKind::Mcp => "mcp",
        RefKind::Hashmap => "hashmap",
        RefKind::Ledger => "ledger",
        RefKind::Memory => "memory",
        RefKind::Pipeline => "pipeline",
        RefKind::Host => "host",
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{:?}", s.as_str()),
            Value::Unset => f.write_str("<unset>"),
            other => f.write_str(&other.to_display()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display())
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.equals(other)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::str(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(Str::from(v))
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_small_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Value>();
        assert_eq!(std::mem::size_of::<Value>(), 16);
    }

    #[test]
    fn float_display_has_no_exponent_and_no_trailing_zero() {
        let show = |f: f64| Value::Float(f).to_display();
        assert_eq!(show(3.0), "3");
        assert_eq!(show(1e21), "1000000000000000000000");
        assert_eq!(show(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(show(0.000001), "0.000001");
        assert_eq!(show(f64::INFINITY), "inf");
        assert_eq!(show(f64::NAN), "NaN");
        assert_eq!(show(-0.0), "-0");
    }

    #[test]
    fn deeply_nested_values_drop_without_overflow() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut v = Value::Nil;
                for i in 0..200_000 {
                    v = match i % 4 {
                        0 => Value::some(v),
                        1 => Value::array(vec![v]),
                        2 => Value::map([("k", v)]),
                        _ => Value::record("R", vec![("f", v)]),
                    };
                }
                drop(v);
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn cyclic_array_displays_without_overflow() {
        let arr = Array::new(vec![Value::Int(1)]);
        arr.0.lock().push(Value::Array(arr.clone()));
        let text = Value::Array(arr.clone()).to_display();
        assert!(text.contains("..."));
        let json = Value::Array(arr.clone()).to_json();
        assert!(json.is_array());
        arr.0.lock().clear(); // break the cycle so the test does not leak
    }

    #[test]
    fn json_round_trip_keeps_int_and_float_apart() {
        let v = Value::from_json(&serde_json::json!({"a": 1, "b": 2.0, "c": [null, true]}));
        assert_eq!(
            v.to_json(),
            serde_json::json!({"a": 1, "b": 2.0, "c": [null, true]})
        );
        assert_eq!(v.to_display(), "{\"a\": 1, \"b\": 2, \"c\": [nil, true]}");
    }

    #[test]
    fn a_value_containing_itself_twice_displays_and_serialises_in_bounded_time() {
        // a.push(a); a.push(a): written out naively this has 2^depth nodes.
        let a = Array::new(Vec::new());
        let v = Value::Array(a.clone());
        a.0.lock().push(v.clone());
        a.0.lock().push(v.clone());
        // Without the node budget this walk would not finish.
        let text = v.to_display();
        let json = v.to_json().to_string();
        assert!(text.len() < 10 * MAX_NODES, "{}", text.len());
        assert!(text.contains("..."));
        assert!(json.contains("..."));
        // Break the cycle so the test does not leak.
        a.0.lock().clear();
    }
}
