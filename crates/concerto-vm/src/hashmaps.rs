//! Hashmap methods: the whole map and scoped views of it, queries with Concerto predicates,
//! batch reads and writes, and change callbacks registered from Concerto code.
//!
//! A *view* is a hashmap plus a key prefix: the declared map is the view with the empty
//! prefix; `map.scope("a")` is the view with prefix `a:`, and `view.scope("b")` nests it
//! (`a:b:`). A view reads and writes only the keys under its prefix and shows them without
//! it; the entries live in the one physical map (the memory store), so views handed to
//! different agents or functions share it while keeping their key spaces apart.
//!
//! Change callbacks (`on_change(key, |old, new| ..)`, `on_any_change(|key, old, new| ..)`)
//! belong to the execution that registered them. They run after the write, in the order the
//! changes happened, as ordinary Concerto calls (an error in one propagates like any other).
//! `old`/`new` are `nil` when the key was absent / has been deleted. Writes to a map without
//! callbacks take the store's plain (fast) path.

use crate::builtins::arg;
use crate::error::{ErrorKind, VmError};
use crate::exec::{Continuation, Ctx, Flow, Step};
use crate::host::{HostError, MapId, Reply};
use crate::methods::Method;
use crate::value::{Map, NativeObject, Object, Str, Value};

/// A scoped view of hashmap `map`: the keys starting with `prefix` (`a:`, `a:b:`).
pub(crate) struct HashMapScope {
    pub(crate) map: MapId,
    pub(crate) prefix: Str,
}

impl NativeObject for HashMapScope {
    fn type_name(&self) -> &str {
        "HashMapRef"
    }
    fn display(&self) -> String {
        format!(
            "<hashmap {} scope {}>",
            self.map,
            self.prefix.trim_end_matches(':')
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A change callback registered by Concerto code.
pub(crate) struct Watcher {
    map: MapId,
    /// The view's prefix: `on_any_change` sees keys under it, relative to it.
    prefix: Str,
    /// `on_change(key, ..)`: the full key watched.
    key: Option<Str>,
    callback: Value,
}

/// One write's effect on one key.
#[derive(Clone)]
struct Change {
    key: Str,
    old: Option<Value>,
    new: Option<Value>,
}

/// The changes of a write, carried through a suspension.
struct Changes(Vec<Change>);

impl NativeObject for Changes {
    fn type_name(&self) -> &str {
        "HashMapChanges"
    }
    fn display(&self) -> String {
        "<hashmap changes>".into()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The store key of `key` in a view with `prefix`.
fn full_key(prefix: &str, key: &Value) -> Str {
    let key = match key {
        Value::Str(s) => s.clone(),
        other => Str::from(other.to_display()),
    };
    if prefix.is_empty() {
        key
    } else {
        Str::from(format!("{prefix}{key}"))
    }
}

fn map_name(ctx: &Ctx, map: MapId) -> String {
    ctx.program()
        .hashmaps
        .get(map.index())
        .map_or_else(|| format!("#{map}"), |h| h.name.clone())
}

#[cold]
fn arity(ctx: &Ctx, map: MapId, method: &str, expected: usize, got: usize) -> VmError {
    VmError::new(
        ErrorKind::Arity,
        format!(
            "call error: HashMap `{}`.{method} takes {expected} argument{}, got {got}",
            map_name(ctx, map),
            if expected == 1 { "" } else { "s" }
        ),
    )
}

/// Converts a store reply into a flow, mapping the result to a value.
fn reply<T: Send + 'static>(
    r: Reply<Result<T, HostError>>,
    to_value: impl FnOnce(T) -> Value + Send + 'static,
) -> Result<Flow, VmError> {
    match r {
        Reply::Ready(Ok(v)) => Ok(Flow::Value(to_value(v))),
        Reply::Ready(Err(e)) => Err(e.into()),
        Reply::Pending(fut) => Ok(Flow::Suspend(Box::pin(async move {
            fut.await.map(to_value).map_err(VmError::from)
        }))),
    }
}

/// Waits for a store reply (at once when it is ready).
async fn resolve<T: Send + 'static>(r: Reply<Result<T, HostError>>) -> Result<T, HostError> {
    match r {
        Reply::Ready(r) => r,
        Reply::Pending(fut) => fut.await,
    }
}

/// The entries of the view, keys relative to it.
fn view_entries(
    ctx: &Ctx,
    map: MapId,
    prefix: &Str,
) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
    let strip = prefix.clone();
    let filter = move |entries: Vec<(Str, Value)>| -> Vec<(Str, Value)> {
        if strip.is_empty() {
            return entries;
        }
        entries
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(strip.as_str())
                    .map(|rest| (Str::from(rest), v))
            })
            .collect()
    };
    match ctx.host.memory.hashmap_entries(map) {
        Reply::Ready(r) => Reply::Ready(r.map(filter)),
        Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(filter) })),
    }
}

/// Whether Concerto code watches any key of `map`.
pub(crate) fn watched(ctx: &Ctx, map: MapId) -> bool {
    !ctx.watchers.is_empty() && ctx.watchers.iter().any(|w| w.map == map)
}

/// A method on hashmap `map` seen through `prefix` (empty for the whole map).
pub(crate) fn method(
    ctx: &mut Ctx,
    method: Method,
    name: &str,
    map: MapId,
    prefix: &Str,
    args: &[Value],
) -> Result<Flow, VmError> {
    let store = ctx.host.memory.clone();
    let whole = prefix.is_empty();
    match method {
        Method::Set | Method::Insert => {
            if args.len() < 2 {
                return Err(arity(ctx, map, "set", 2, args.len()));
            }
            let key = full_key(prefix, &args[0]);
            let value = args[1].clone();
            if watched(ctx, map) {
                let new = value.clone();
                let write = match store.hashmap_replace(map, key.clone(), value) {
                    Reply::Ready(r) => Reply::Ready(r.map(|old| {
                        vec![Change {
                            key,
                            old,
                            new: Some(new),
                        }]
                    })),
                    Reply::Pending(fut) => Reply::Pending(Box::pin(async move {
                        fut.await.map(|old| {
                            vec![Change {
                                key,
                                old,
                                new: Some(new),
                            }]
                        })
                    })),
                };
                return notify(ctx, map, write, Value::Nil);
            }
            reply(store.hashmap_set(map, key, value), |()| Value::Nil)
        }
        Method::Get => {
            let key = full_key(prefix, arg(args, 0));
            reply(store.hashmap_get(map, &key), Value::option)
        }
        Method::Has | Method::ContainsKey => {
            let key = full_key(prefix, arg(args, 0));
            reply(store.hashmap_has(map, &key), Value::Bool)
        }
        Method::Delete | Method::Remove => {
            let key = full_key(prefix, arg(args, 0));
            if watched(ctx, map) {
                let write =
                    match store.hashmap_remove(map, &key) {
                        Reply::Ready(r) => Reply::Ready(r.map(|old| removed(key, old))),
                        Reply::Pending(fut) => Reply::Pending(Box::pin(async move {
                            fut.await.map(|old| removed(key, old))
                        })),
                    };
                // `delete` answers whether the key was there.
                return notify_with(ctx, map, write, |changes| Value::Bool(!changes.is_empty()));
            }
            reply(store.hashmap_delete(map, &key), Value::Bool)
        }
        Method::Len if whole => reply(store.hashmap_len(map), |n| Value::Int(n as i64)),
        Method::IsEmpty if whole => reply(store.hashmap_len(map), |n| Value::Bool(n == 0)),
        Method::Len => reply(view_entries(ctx, map, prefix), |e| {
            Value::Int(e.len() as i64)
        }),
        Method::IsEmpty => reply(view_entries(ctx, map, prefix), |e| {
            Value::Bool(e.is_empty())
        }),
        Method::Keys => reply(view_entries(ctx, map, prefix), |entries| {
            Value::array(entries.into_iter().map(|(k, _)| Value::Str(k)).collect())
        }),
        Method::Values => reply(view_entries(ctx, map, prefix), |entries| {
            Value::array(entries.into_iter().map(|(_, v)| v).collect())
        }),
        Method::Entries | Method::Iter => reply(view_entries(ctx, map, prefix), |entries| {
            Value::array(
                entries
                    .into_iter()
                    .map(|(k, v)| Value::array(vec![Value::Str(k), v]))
                    .collect(),
            )
        }),
        Method::Clear if whole && !watched(ctx, map) => {
            reply(store.hashmap_clear(map), |()| Value::Nil)
        }
        Method::Clear => {
            // Remove the view's keys one by one, so that callbacks see each removal.
            let entries = view_entries(ctx, map, prefix);
            let prefix = prefix.clone();
            let write: Reply<Result<Vec<Change>, HostError>> =
                Reply::Pending(Box::pin(async move {
                    let mut changes = Vec::new();
                    for (rel, _) in resolve(entries).await? {
                        let key = full_key(&prefix, &Value::Str(rel));
                        let old = resolve(store.hashmap_remove(map, &key)).await?;
                        changes.extend(removed(key, old));
                    }
                    Ok(changes)
                }));
            notify(ctx, map, write, Value::Nil)
        }
        Method::SetMany => {
            let Value::Map(m) = arg(args, 0) else {
                return Err(VmError::type_error(format!(
                    "HashMap `{}`.set_many expects a Map of entries, got {}",
                    map_name(ctx, map),
                    arg(args, 0).type_name()
                )));
            };
            let entries: Vec<(Str, Value)> =
                m.0.lock()
                    .iter()
                    .map(|(k, v)| (full_key(prefix, &Value::Str(k.clone())), v.clone()))
                    .collect();
            if watched(ctx, map) {
                // Old values first (one consistent read), then the atomic write.
                let keys: Vec<Str> = entries.iter().map(|(k, _)| k.clone()).collect();
                let olds = store.hashmap_get_many(map, keys);
                let write: Reply<Result<Vec<Change>, HostError>> =
                    Reply::Pending(Box::pin(async move {
                        let olds = resolve(olds).await?;
                        let changes: Vec<Change> = entries
                            .iter()
                            .zip(olds)
                            .map(|((k, v), old)| Change {
                                key: k.clone(),
                                old,
                                new: Some(v.clone()),
                            })
                            .collect();
                        resolve(store.hashmap_set_many(map, entries)).await?;
                        Ok(changes)
                    }));
                return notify(ctx, map, write, Value::Nil);
            }
            reply(store.hashmap_set_many(map, entries), |()| Value::Nil)
        }
        Method::GetMany => {
            let rel: Vec<Value> = match arg(args, 0) {
                Value::Array(a) => a.to_vec(),
                other => vec![other.clone()],
            };
            let keys: Vec<Str> = rel.iter().map(|k| full_key(prefix, k)).collect();
            let names: Vec<Str> = rel.iter().map(|k| full_key("", k)).collect();
            reply(store.hashmap_get_many(map, keys), move |values| {
                Value::Map(Map::from_pairs(
                    names
                        .into_iter()
                        .zip(values)
                        .map(|(k, v)| (k, Value::option(v))),
                ))
            })
        }
        Method::Query | Method::Find | Method::Filter => {
            let pred = arg(args, 0).clone();
            let kind = if method == Method::Find {
                Scan::Find
            } else {
                Scan::Query
            };
            match view_entries(ctx, map, prefix) {
                Reply::Ready(r) => {
                    let entries = r.map_err(VmError::from)?;
                    Ok(Flow::Start(Box::new(ScanOp::new(kind, pred, entries))))
                }
                Reply::Pending(fut) => {
                    let mut scan = ScanOp::new(kind, pred, Vec::new());
                    scan.pending = Some(fut);
                    Ok(Flow::Start(Box::new(scan)))
                }
            }
        }
        Method::Scope => {
            let sub = arg(args, 0).to_display();
            Ok(Flow::Value(Value::Object(Object::new(HashMapScope {
                map,
                prefix: Str::from(format!("{prefix}{sub}:")),
            }))))
        }
        Method::OnChange => {
            let callback = arg(args, 1).clone();
            check_callable(ctx, map, "on_change", &callback)?;
            ctx.watchers.push(Watcher {
                map,
                prefix: prefix.clone(),
                key: Some(full_key(prefix, arg(args, 0))),
                callback,
            });
            Ok(Flow::Value(Value::Nil))
        }
        Method::OnAnyChange => {
            let callback = arg(args, 0).clone();
            check_callable(ctx, map, "on_any_change", &callback)?;
            ctx.watchers.push(Watcher {
                map,
                prefix: prefix.clone(),
                key: None,
                callback,
            });
            Ok(Flow::Value(Value::Nil))
        }
        Method::ToString => Ok(Flow::Value(Value::str(format!(
            "<hashmap {}>",
            map_name(ctx, map)
        )))),
        _ => Err(VmError::type_error(format!(
            "no method '{name}' on HashMap `{}`",
            map_name(ctx, map)
        ))),
    }
}

fn removed(key: Str, old: Option<Value>) -> Vec<Change> {
    match old {
        Some(old) => vec![Change {
            key,
            old: Some(old),
            new: None,
        }],
        None => Vec::new(),
    }
}

fn check_callable(ctx: &Ctx, map: MapId, method: &str, callback: &Value) -> Result<(), VmError> {
    match callback {
        // Closures are function names (string constants) in IR from concertoc.
        Value::Func(_) | Value::Str(_) => Ok(()),
        other => Err(VmError::type_error(format!(
            "HashMap `{}`.{method} expects a function, got {}",
            map_name(ctx, map),
            other.type_name()
        ))),
    }
}

fn notify(
    ctx: &mut Ctx,
    map: MapId,
    write: Reply<Result<Vec<Change>, HostError>>,
    result: Value,
) -> Result<Flow, VmError> {
    notify_with(ctx, map, write, move |_| result)
}

/// Runs the write, then the callbacks watching the keys it changed; the method's value is
/// `result(changes)`.
fn notify_with(
    ctx: &mut Ctx,
    map: MapId,
    write: Reply<Result<Vec<Change>, HostError>>,
    result: impl FnOnce(&[Change]) -> Value + Send + 'static,
) -> Result<Flow, VmError> {
    let _ = ctx;
    Ok(Flow::Start(Box::new(NotifyOp {
        map,
        write: Some(write),
        result: Some(Box::new(result)),
        calls: std::collections::VecDeque::new(),
        value: Value::Nil,
        started: false,
    })))
}

type ResultFn = Box<dyn FnOnce(&[Change]) -> Value + Send>;

/// A write followed by the change callbacks it triggers.
struct NotifyOp {
    map: MapId,
    write: Option<Reply<Result<Vec<Change>, HostError>>>,
    result: Option<ResultFn>,
    calls: std::collections::VecDeque<(Value, Vec<Value>)>,
    value: Value,
    started: bool,
}

impl NotifyOp {
    fn plan(&mut self, ctx: &Ctx, changes: Vec<Change>) {
        if let Some(result) = self.result.take() {
            self.value = result(&changes);
        }
        let nil = |v: &Option<Value>| v.clone().unwrap_or(Value::Nil);
        for change in &changes {
            for w in ctx.watchers.iter().filter(|w| w.map == self.map) {
                match &w.key {
                    Some(key) if *key == change.key => self
                        .calls
                        .push_back((w.callback.clone(), vec![nil(&change.old), nil(&change.new)])),
                    Some(_) => {}
                    None => {
                        if let Some(rel) = change.key.strip_prefix(w.prefix.as_str()) {
                            self.calls.push_back((
                                w.callback.clone(),
                                vec![Value::str(rel), nil(&change.old), nil(&change.new)],
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl Continuation for NotifyOp {
    fn resume(&mut self, ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        let input = input?;
        if !self.started {
            self.started = true;
            match self.write.take() {
                Some(Reply::Ready(r)) => {
                    let changes = r.map_err(VmError::from)?;
                    self.plan(ctx, changes);
                }
                Some(Reply::Pending(fut)) => {
                    return Ok(Step::Suspend(Box::pin(async move {
                        let changes = fut.await.map_err(VmError::from)?;
                        Ok(Value::Object(Object::new(Changes(changes))))
                    })));
                }
                None => {}
            }
        } else if let Value::Object(obj) = &input
            && self.result.is_some()
            && let Some(Changes(changes)) = obj.downcast::<Changes>()
        {
            let changes = changes.clone();
            self.plan(ctx, changes);
        }
        match self.calls.pop_front() {
            Some((callback, args)) => Ok(Step::Call(callback, args.into())),
            None => Ok(Step::Return(std::mem::take(&mut self.value))),
        }
    }

    fn frame_name(&self) -> &str {
        "<hashmap change callbacks>"
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// `query(pred)`: a Map of the matching entries.
    Query,
    /// `find(pred)`: `Some([key, value])` of the first match, or `None`.
    Find,
}

/// `query` / `find`: calls `pred(key, value)` for each entry.
pub(crate) struct ScanOp {
    kind: Scan,
    pred: Value,
    entries: Vec<(Str, Value)>,
    idx: usize,
    started: bool,
    out: Vec<(Str, Value)>,
    /// The entries, when the store answers later.
    pending: Option<PendingEntries>,
    /// Waiting for `pending`.
    loading: bool,
}

impl ScanOp {
    fn new(kind: Scan, pred: Value, entries: Vec<(Str, Value)>) -> ScanOp {
        ScanOp {
            kind,
            pred,
            entries,
            idx: 0,
            started: false,
            out: Vec::new(),
            pending: None,
            loading: false,
        }
    }
}

/// A store's later answer with a map's entries.
type PendingEntries = crate::host::BoxFuture<Result<Vec<(Str, Value)>, HostError>>;

/// Entries carried through a suspension.
struct Entries(Vec<(Str, Value)>);

impl NativeObject for Entries {
    fn type_name(&self) -> &str {
        "HashMapEntries"
    }
    fn display(&self) -> String {
        "<hashmap entries>".into()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Continuation for ScanOp {
    fn resume(&mut self, _ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        let result = input?;
        if let Some(fut) = self.pending.take() {
            self.loading = true;
            return Ok(Step::Suspend(Box::pin(async move {
                let entries = fut.await.map_err(VmError::from)?;
                Ok(Value::Object(Object::new(Entries(entries))))
            })));
        }
        if self.loading {
            self.loading = false;
            if let Value::Object(obj) = &result
                && let Some(Entries(entries)) = obj.downcast::<Entries>()
            {
                self.entries = entries.clone();
            }
            return self.next();
        }
        if self.started {
            if result.is_truthy() {
                let (k, v) = self.entries[self.idx].clone();
                if self.kind == Scan::Find {
                    return Ok(Step::Return(Value::some(Value::array(vec![
                        Value::Str(k),
                        v,
                    ]))));
                }
                self.out.push((k, v));
            }
            self.idx += 1;
        }
        self.next()
    }

    fn frame_name(&self) -> &str {
        match self.kind {
            Scan::Query => "<hashmap query>",
            Scan::Find => "<hashmap find>",
        }
    }
}

impl ScanOp {
    /// Calls the predicate on the next entry, or returns the result.
    fn next(&mut self) -> Result<Step, VmError> {
        self.started = true;
        match self.entries.get(self.idx) {
            Some((k, v)) => Ok(Step::Call(
                self.pred.clone(),
                smallvec::smallvec![Value::Str(k.clone()), v.clone()],
            )),
            None => Ok(Step::Return(match self.kind {
                Scan::Query => Value::Map(Map::from_pairs(std::mem::take(&mut self.out))),
                Scan::Find => Value::None,
            })),
        }
    }
}

/// The result of indexing a hashmap: now, or when the store answers.
pub(crate) enum Indexed {
    /// Available now.
    Now(Result<Value, VmError>),
    /// The store answers later.
    Later(crate::host::BoxFuture<Result<Value, VmError>>),
}

/// A hashmap's entries as read for `map[i]`, valid while its version stays the same.
pub(crate) struct IndexedEntries {
    map: MapId,
    prefix: Str,
    version: u64,
    entries: Vec<(Str, Value)>,
}

/// `INDEX_GET` on a hashmap or a view: `map[i]` with an integer is the i-th entry as
/// `[key, value]` (this is how `for (k, v) in map` walks it: `len()` then `map[0]`, `map[1]`,
/// …); `map[key]` is the value or `nil`. The entries read for one index serve the next ones
/// while the store reports the same version for the hashmap, so a walk reads them once per
/// change, not once per step; a store without versions (SQLite, Redis) is read at every
/// step (quadratic for large maps: `entries()` reads them once).
#[cold]
pub(crate) fn index(coll: &Value, idx: &Value, ctx: &mut Ctx) -> Option<Indexed> {
    let (map, prefix) = match coll {
        Value::Ref(r) if r.kind == crate::value::RefKind::Hashmap => {
            (MapId(r.index), Str::from(""))
        }
        Value::Object(obj) => {
            let view = obj.downcast::<HashMapScope>()?;
            (view.map, view.prefix.clone())
        }
        _ => return None,
    };
    fn nth(i: i64, entries: &[(Str, Value)]) -> Result<Value, VmError> {
        match usize::try_from(i).ok().and_then(|at| entries.get(at)) {
            Some((k, v)) => Ok(Value::array(vec![Value::Str(k.clone()), v.clone()])),
            None => Err(VmError::index_out_of_bounds(i, entries.len())),
        }
    }
    Some(match idx {
        Value::Int(i) => {
            let i = *i;
            // `for (k, v) in map` reads map[0], map[1], …: the entries read for the first
            // index serve the next ones while the hashmap's version stays the same (the
            // version is read before the entries, so a change in between only costs one
            // more read).
            let version = ctx.host.memory.hashmap_version(map);
            if let (Some(version), Some(kept)) = (version, &ctx.indexed_entries)
                && kept.map == map
                && kept.version == version
                && kept.prefix == prefix
            {
                return Some(Indexed::Now(nth(i, &kept.entries)));
            }
            match view_entries(ctx, map, &prefix) {
                Reply::Ready(Ok(entries)) => {
                    let result = nth(i, &entries);
                    ctx.indexed_entries = version.map(|version| IndexedEntries {
                        map,
                        prefix,
                        version,
                        entries,
                    });
                    Indexed::Now(result)
                }
                Reply::Ready(Err(e)) => Indexed::Now(Err(e.into())),
                Reply::Pending(fut) => Indexed::Later(Box::pin(async move {
                    nth(i, &fut.await.map_err(VmError::from)?)
                })),
            }
        }
        key => match ctx.host.memory.hashmap_get(map, &full_key(&prefix, key)) {
            Reply::Ready(r) => {
                Indexed::Now(r.map(|v| v.unwrap_or(Value::Nil)).map_err(VmError::from))
            }
            Reply::Pending(fut) => Indexed::Later(Box::pin(async move {
                fut.await
                    .map(|v| v.unwrap_or(Value::Nil))
                    .map_err(VmError::from)
            })),
        },
    })
}
