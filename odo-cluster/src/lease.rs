//! Membership: this host's lease in etcd, kept alive, with the local
//! deadline that tells the host when to stop serving.
//!
//! The lease cannot expire in etcd before `sent + TTL`, where `sent` is
//! when this host sent a keep-alive that etcd acknowledged (etcd renews
//! the TTL when it receives it, which is later). So the host may serve
//! until `sent + local_deadline`, with `local_deadline < TTL`, measured on
//! the monotonic clock: past that, it stops serving its shards before any
//! other host can have been given them.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::keys::{Keys, Member};

/// The lease as the host knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease yet, or the last one could not be renewed in time.
    Lost,
    /// Lease `id`, renewed; the host may serve until `until`.
    Held {
        /// The lease id.
        id: i64,
        /// The local deadline.
        until: Instant,
    },
}

impl LeaseState {
    /// The lease id, if it may still serve at `now`.
    pub fn serving(&self, now: Instant) -> Option<i64> {
        match *self {
            Self::Held { id, until } if now < until => Some(id),
            _ => None,
        }
    }
}

/// Keeps this host's lease and member key until `stop` is set, then
/// revokes the lease (removing the member and owner keys at once).
pub(crate) async fn run(
    mut client: Client,
    keys: Keys,
    config: Arc<ClusterConfig>,
    member: watch::Receiver<Member>,
    state: watch::Sender<LeaseState>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = config.lease_ttl.as_secs() as i64;
    let interval = config.lease_ttl / 6;
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        // A new lease.
        let granted =
            tokio::time::timeout(config.etcd_timeout, client.lease_grant(ttl, None)).await;
        let id = match granted {
            Ok(Ok(granted)) => granted.id(),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot get a lease from etcd; retrying");
                sleep_or_stop(backoff, &mut stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                warn!("etcd did not answer a lease request in time; retrying");
                sleep_or_stop(backoff, &mut stop).await;
                continue;
            }
        };
        let sent = Instant::now();
        backoff = Duration::from_millis(100);
        let record = member.borrow().clone();
        if let Err(e) = put_member(&mut client, &keys, &record, id, &config).await {
            warn!(error = %e, "cannot register as a member; retrying");
            let _ = client.lease_revoke(id).await;
            sleep_or_stop(backoff, &mut stop).await;
            continue;
        }
        state.send_replace(LeaseState::Held {
            id,
            until: sent + config.local_deadline,
        });
        info!(lease = id, host = %config.host, "joined the cluster");
        keep_alive(
            &mut client,
            &keys,
            &config,
            id,
            &member,
            &state,
            &mut stop,
            interval,
        )
        .await;
        if *stop.borrow() {
            let revoked = tokio::time::timeout(config.etcd_timeout, client.lease_revoke(id)).await;
            if !matches!(revoked, Ok(Ok(_))) {
                warn!("could not revoke the lease; it expires by itself");
            }
            state.send_replace(LeaseState::Lost);
            return;
        }
    }
}

async fn put_member(
    client: &mut Client,
    keys: &Keys,
    member: &Member,
    lease: i64,
    config: &ClusterConfig,
) -> Result<(), String> {
    let value = serde_json::to_vec(member).map_err(|e| e.to_string())?;
    let put = client.put(
        keys.member(&member.host),
        value,
        Some(PutOptions::new().with_lease(lease)),
    );
    match tokio::time::timeout(config.etcd_timeout, put).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Renews lease `id` every `interval` until it is gone or `stop` is set.
#[allow(clippy::too_many_arguments)]
async fn keep_alive(
    client: &mut Client,
    keys: &Keys,
    config: &ClusterConfig,
    id: i64,
    member: &watch::Receiver<Member>,
    state: &watch::Sender<LeaseState>,
    stop: &mut watch::Receiver<bool>,
    interval: Duration,
) {
    let mut member = member.clone();
    let mut last_put = member.borrow_and_update().clone();
    let mut stream = None;
    let mut lost_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let current = member.borrow_and_update().clone();
        if current != last_put {
            match put_member(client, keys, &current, id, config).await {
                Ok(()) => last_put = current,
                Err(e) => warn!(error = %e, "cannot update the member record"),
            }
        }
        let sent = Instant::now();
        if stream.is_none() {
            // Opening the stream renews the lease once and reads etcd's
            // answer: a lease that expired meanwhile (the host was cut off
            // from etcd past its TTL) fails here, not in the loop below.
            match tokio::time::timeout(config.etcd_timeout, client.lease_keep_alive(id)).await {
                Ok(Ok(opened)) => stream = Some(opened),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                    warn!(
                        lease = id,
                        "the lease expired in etcd while it could not be renewed; joining again"
                    );
                    state.send_replace(LeaseState::Lost);
                    return;
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
        let renewed = match stream.as_mut() {
            None => None,
            Some((keeper, responses)) => {
                let round = async {
                    keeper.keep_alive().await?;
                    responses.message().await
                };
                match tokio::time::timeout(config.etcd_timeout.min(interval * 2), round).await {
                    Ok(Ok(Some(response))) => Some(response.ttl()),
                    _ => None,
                }
            }
        };
        match renewed {
            Some(ttl) if ttl > 0 => {
                if lost_logged {
                    info!(lease = id, "lease renewed again; serving");
                    lost_logged = false;
                }
                state.send_replace(LeaseState::Held {
                    id,
                    until: sent + config.local_deadline,
                });
            }
            Some(_) => {
                warn!(
                    lease = id,
                    "the lease expired in etcd; stopping serving and joining again"
                );
                state.send_replace(LeaseState::Lost);
                return;
            }
            None => {
                stream = None;
                let past = state.borrow().serving(Instant::now()).is_none();
                if past && !lost_logged {
                    warn!(
                        lease = id,
                        deadline_ms = config.local_deadline.as_millis() as u64,
                        "could not renew the lease within the local deadline: stopped serving this host's shards"
                    );
                    state.send_replace(LeaseState::Lost);
                    lost_logged = true;
                }
            }
        }
        let next = sent + interval;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => {}
            _ = member.changed() => {}
        }
    }
}

async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
}
