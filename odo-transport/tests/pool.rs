//! The channel pool under a burst: many callers asking at once for an
//! endpoint with no open channel (a router's first requests, or every
//! request in flight when a worker restarts) share one connection attempt
//! instead of each opening its own.
#![cfg(unix)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use odo_core::wire::Response;
use odo_transport::ChannelPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_callers_shares_one_connection_attempt() {
    for kind in [Kind::Unix, Kind::Tcp] {
        // A server that admits few handshakes at once, as a worker's
        // transport does (64 by default): one connection per caller would
        // have most of them dropped before their handshake.
        let mut config = server_config();
        config.max_unauthenticated = 2;
        let server = start(kind, config, echo()).await;
        let endpoint = server.endpoint.to_string();
        let pool = Arc::new(ChannelPool::new(client_config()));
        let callers: Vec<_> = (0..200u64)
            .map(|n| {
                let pool = pool.clone();
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let channel = pool.get(&endpoint).await.map_err(|e| e.to_string())?;
                    let body = Bytes::from(format!("call {n}"));
                    let answer = channel
                        .call(request(n), body.clone(), LONG)
                        .await
                        .map_err(|e| e.to_string())?;
                    assert_eq!(answer, (Response::Rpc, body));
                    Ok::<_, String>(())
                })
            })
            .collect();
        let mut failed = Vec::new();
        for caller in callers {
            let outcome = tokio::time::timeout(Duration::from_secs(30), caller)
                .await
                .expect("answered")
                .expect("the caller did not panic");
            if let Err(e) = outcome {
                failed.push(e);
            }
        }
        assert!(
            failed.is_empty(),
            "{kind:?}: {} of 200 callers failed, e.g. {}",
            failed.len(),
            failed[0]
        );
        server.stop().await;
    }
}
