//! Typed ids for what the host traits address by its index in the program: a connection
//! ([`ConnectionId`]), a schema ([`SchemaId`]) and a hashmap ([`MapId`]). Each is a `u32` with no runtime cost
//! (`repr(transparent)`).

/// A connection: its index in the program's `connections` (see
/// [`Connections::chat`](super::Connections::chat)).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u32);

/// A schema: its index in the program's schemas (see [`SchemaValidator`](super::SchemaValidator)).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SchemaId(pub u32);

impl ConnectionId {
    /// The index as a `usize`, for indexing the program's connections.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl SchemaId {
    /// The index as a `usize`, for indexing the program's schemas.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A hashmap: its index in the program's `hashmaps` (see
/// [`HashmapStore`](super::HashmapStore)).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapId(pub u32);

impl MapId {
    /// The index as a `usize`, for indexing the program's hashmaps.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for MapId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
