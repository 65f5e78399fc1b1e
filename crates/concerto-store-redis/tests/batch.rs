//! `JournalStore::apply` on the Redis store against a real `redis-server` (started by each
//! test on a free loopback port): the writes and the journal record commit together or not
//! at all, as another connection sees.

use std::sync::Arc;

use concerto_store_redis::RedisStore;
use concerto_vm::host::MemoryStore;
use concerto_vm::testing;

use crate::common::RedisServer;

fn open(server: &RedisServer) -> RedisStore {
    RedisStore::connect(
        &server.url(),
        "batch",
        vec!["store".to_string(), "other".to_string()],
    )
    .expect("connect")
}

#[test]
fn a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record() {
    let server = RedisServer::start();
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&server)) };
    testing::a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record(&open);
}

#[test]
fn a_good_batch_lands_with_its_journal_record() {
    let server = RedisServer::start();
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&server)) };
    testing::a_good_batch_lands_with_its_journal_record(&open);
}

#[test]
fn a_batch_of_an_older_epoch_is_refused_and_writes_nothing() {
    let server = RedisServer::start();
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&server)) };
    testing::a_batch_of_an_older_epoch_is_refused_and_writes_nothing(&open);
}
