//! Cluster-scope failover (docs/cluster.md §3): one active replica of a
//! service among every supervisor sharing a `[supervisor.cluster]` prefix,
//! elected through etcd.
//!
//! Each supervisor holds one lease, kept alive by a task ([`keep`]) every
//! quarter of its TTL. A supervisor with a standby fit to take over
//! campaigns for the service's key: a transaction that creates it under the
//! lease only if it is absent. The winner's token is the key's creation
//! revision, which grows with every new leader; it promotes its standby and
//! hands the replica's shim a deadline: when the last successful
//! keep-alive was *sent*, plus the TTL, minus [`MARGIN`]. Every renewal
//! moves it on; should it pass (the supervisor is dead, frozen or cut off
//! from etcd), the shim demotes the replica by itself, before etcd can
//! have let the lease expire and anyone else take the key (`shim::fence`).
//!
//! The loop's own view follows the same deadline: past it, whatever it led
//! is fenced and the lease abandoned (revoked, a new one granted), so a
//! supervisor that was frozen never carries on as leader; it campaigns
//! again. An active lost for any other reason (stopped, exited, unhealthy)
//! resigns at once: the key is deleted, if still ours, and the watchers of
//! the other supervisors campaign.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::journal::rfc3339;
use super::replica::{ReplicaId, Role};
use super::{Message, Supervisor};
use crate::control::protocol::{ClusterNode, ClusterStatus};
use crate::etcd::{self, Campaign, Etcd};
use crate::shim::protocol::{FENCE_SIGNAL, FenceOrder, boot_now, write_record};
use crate::spec::{ClusterSettings, Service};

/// The shim demotes its replica this long before the lease can end at
/// etcd: it covers the demotion itself (a fencing stop kills after half of
/// it), the scheduling delay of the shim, and any difference in the rate of
/// this machine's clock and the etcd leader's over one TTL.
pub(super) const MARGIN: Duration = Duration::from_secs(1);

/// What the cluster tasks tell the loop. `epoch` names the lease keeper a
/// message is from: news of a keeper since replaced is ignored.
pub(super) enum News {
    Granted {
        epoch: u64,
        lease: i64,
        sent_ns: u64,
    },
    Renewed {
        epoch: u64,
        sent_ns: u64,
        took: Duration,
    },
    LeaseGone {
        epoch: u64,
    },
    Unreachable {
        epoch: u64,
        error: String,
    },
    Campaigned {
        service: String,
        lease: i64,
        result: Result<Campaign, String>,
    },
    /// The watched key was deleted (or the watch ended): campaign again.
    MayBeFree {
        service: String,
    },
}

/// Where this supervisor stands in one service's election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Stand {
    /// It may campaign (once it has a lease and a fit standby).
    #[default]
    Free,
    Campaigning,
    /// Another node holds the key; a watch says when it is gone.
    Held,
    /// It holds the key, created at `token`; `promoted` once its standby
    /// was made active (until then, no active is not a loss).
    Leader {
        token: u64,
        promoted: bool,
    },
}

/// What the plan needs to know of a service's election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Not a cluster-scope service.
    Local,
    /// Won, its standby not promoted yet.
    Elected,
    /// Leads, its standby was promoted.
    Leads,
    /// May campaign for it.
    MayCampaign,
    /// Neither: another leads, a campaign is under way, or there is no lease.
    Wait,
}

#[derive(Default)]
pub(super) struct Election {
    pub stand: Stand,
    /// The leader's node and token, as last seen.
    pub leader: Option<(String, u64)>,
    watch: Option<Task>,
}

/// A task aborted when dropped.
struct Task(AbortHandle);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct Cluster {
    pub settings: ClusterSettings,
    etcd: Arc<Etcd>,
    epoch: u64,
    keeper: Option<Task>,
    pub lease: Option<i64>,
    /// `CLOCK_BOOTTIME` ns: the fencing deadline of the lease.
    deadline_ns: Option<u64>,
    pub elections: BTreeMap<String, Election>,
    /// etcd has not answered since then.
    pub no_quorum_since: Option<SystemTime>,
    pub renewals: u64,
    pub renewal_failures: u64,
    pub last_renewal: Option<Duration>,
}

impl Cluster {
    pub(super) fn new(settings: ClusterSettings) -> reqwest::Result<Cluster> {
        let etcd = Etcd::new(settings.etcd.clone(), request_timeout(settings.lease))?;
        Ok(Cluster {
            settings,
            etcd: Arc::new(etcd),
            epoch: 0,
            keeper: None,
            lease: None,
            deadline_ns: None,
            elections: BTreeMap::new(),
            no_quorum_since: None,
            renewals: 0,
            renewal_failures: 0,
            last_renewal: None,
        })
    }

    /// (Re)starts the lease keeper, with a lease of its own.
    pub(super) fn start(&mut self, messages: &mpsc::UnboundedSender<Message>) {
        if let Some(lease) = self.lease.take() {
            // Whatever keys it still holds go with it, as soon as etcd
            // answers: left to expire, they could be held a whole TTL
            // more, as etcd renews every lease when it elects a leader.
            let etcd = Arc::clone(&self.etcd);
            tokio::spawn(until_answered(move || {
                let etcd = Arc::clone(&etcd);
                async move { etcd.revoke(lease).await }
            }));
        }
        self.deadline_ns = None;
        self.epoch += 1;
        let task = tokio::spawn(keep(
            Arc::clone(&self.etcd),
            self.settings.lease,
            self.epoch,
            messages.clone(),
        ));
        self.keeper = Some(Task(task.abort_handle()));
    }

    fn key(&self, service: &str) -> String {
        format!("{}/services/{service}/leader", self.settings.prefix)
    }

    pub(super) fn election(&mut self, service: &str) -> &mut Election {
        self.elections.entry(service.to_string()).or_default()
    }

    pub(super) fn standing(&self, service: &str) -> Standing {
        let stand = self.elections.get(service).map(|e| e.stand);
        match stand.unwrap_or_default() {
            Stand::Leader {
                promoted: false, ..
            } => Standing::Elected,
            Stand::Leader { .. } => Standing::Leads,
            Stand::Free if self.lease.is_some() && !self.past_deadline() => Standing::MayCampaign,
            _ => Standing::Wait,
        }
    }

    pub(super) fn token(&self, service: &str) -> Option<u64> {
        match self.elections.get(service)?.stand {
            Stand::Leader { token, .. } => Some(token),
            _ => None,
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline_ns.is_some_and(|d| boot_now() >= d)
    }

    /// The fencing deadline as an order for a shim.
    pub(super) fn order(&self, token: u64) -> FenceOrder {
        FenceOrder {
            token,
            deadline_ns: self.deadline_ns.unwrap_or_default(),
        }
    }

    /// When the loop must look at the deadline, if it leads anything.
    pub(super) fn wake(&self) -> Option<Instant> {
        let leads = self
            .elections
            .values()
            .any(|e| matches!(e.stand, Stand::Leader { .. }));
        let deadline = self.deadline_ns.filter(|_| leads)?;
        Some(Instant::now() + Duration::from_nanos(deadline.saturating_sub(boot_now())))
    }

    fn extend(&mut self, sent_ns: u64) {
        let ttl = self.settings.lease.saturating_sub(MARGIN).as_nanos() as u64;
        self.deadline_ns = Some(sent_ns + ttl);
    }
}

/// A member that does not answer within a sixth of the lease is passed
/// over for the next: a keep-alive that meets a stalled member and then
/// one without a leader (an etcd election under way) still leaves time for
/// more before the deadline, which is at least two thirds of a lease after
/// the last success.
fn request_timeout(lease: Duration) -> Duration {
    lease / 6
}

/// After a failed keep-alive, the next one goes this soon: an etcd leader
/// election lasts about a second, and the deadline does not wait.
const RETRY: Duration = Duration::from_millis(200);

/// Runs `op` until etcd answers it (a refusal is an answer too). Both
/// uses are safe however late they land: a revoke of a lease long gone is
/// refused, and a resignation deletes the key only if it is still the one
/// created at its token.
async fn until_answered<F, R>(op: F)
where
    F: Fn() -> R,
    R: std::future::Future<Output = Result<(), etcd::Error>>,
{
    while let Err(etcd::Error::Unreachable(_)) = op().await {
        tokio::time::sleep(RETRY).await;
    }
}

/// The lease keeper: grants a lease, then renews it every quarter of its
/// TTL (sooner after a failure), and says how each attempt went. A lease
/// found gone is replaced.
async fn keep(
    etcd: Arc<Etcd>,
    ttl: Duration,
    epoch: u64,
    messages: mpsc::UnboundedSender<Message>,
) {
    let every = ttl / 4;
    let tell = |news| messages.send(Message::Cluster(news)).is_ok();
    loop {
        let sent_ns = boot_now();
        let lease = match etcd.grant(ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                let error = e.to_string();
                if !tell(News::Unreachable { epoch, error }) {
                    return;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if !tell(News::Granted {
            epoch,
            lease,
            sent_ns,
        }) {
            return;
        }
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            let sent_ns = boot_now();
            let began = Instant::now();
            let news = match etcd.keep_alive(lease).await {
                Ok(true) => News::Renewed {
                    epoch,
                    sent_ns,
                    took: began.elapsed(),
                },
                Ok(false) => News::LeaseGone { epoch },
                Err(e @ etcd::Error::Refused(_)) if e.to_string().contains("not found") => {
                    News::LeaseGone { epoch }
                }
                Err(e) => News::Unreachable {
                    epoch,
                    error: e.to_string(),
                },
            };
            let gone = matches!(news, News::LeaseGone { .. });
            wait = match news {
                News::Unreachable { .. } => RETRY,
                _ => every,
            };
            if !tell(news) {
                return;
            }
            if gone {
                break;
            }
        }
    }
}

impl Supervisor {
    /// What `status` says of a cluster-scope service's election.
    pub(super) fn cluster_status(&self, service: &Service) -> Option<ClusterStatus> {
        service.failover.as_ref().filter(|f| f.is_cluster())?;
        let cluster = self.cluster.as_ref()?;
        let election = cluster.elections.get(&service.name);
        let stand = election.map(|e| e.stand).unwrap_or_default();
        let role = match stand {
            Stand::Leader { .. } => "leader",
            Stand::Campaigning => "campaigning",
            Stand::Free | Stand::Held => "follower",
        };
        let (leader, token) = match (stand, election.and_then(|e| e.leader.clone())) {
            (Stand::Leader { token, .. }, _) => (Some(cluster.settings.node.clone()), Some(token)),
            (Stand::Held, Some((node, token))) => (Some(node), Some(token)),
            _ => (None, None),
        };
        Some(ClusterStatus {
            node: cluster.settings.node.clone(),
            role: role.into(),
            leader,
            token,
            no_quorum_since: cluster.no_quorum_since.map(rfc3339),
        })
    }

    /// What `status` says of this node's lease.
    pub(super) fn cluster_node(&self) -> Option<ClusterNode> {
        let c = self.cluster.as_ref()?;
        Some(ClusterNode {
            node: c.settings.node.clone(),
            lease: c.lease,
            lease_renewals: c.renewals,
            lease_renewal_failures: c.renewal_failures,
            last_renewal_seconds: c.last_renewal.map(|d| d.as_secs_f64()),
            no_quorum_since: c.no_quorum_since.map(rfc3339),
        })
    }

    /// Sets up cluster-scope failover, if the spec asks for it.
    pub(super) fn join_cluster(&mut self) -> Result<(), String> {
        let Some(settings) = self.spec.supervisor.cluster.clone() else {
            return Ok(());
        };
        if self.cluster.is_some() || self.spec.cluster_services().next().is_none() {
            return Ok(());
        }
        let mut cluster =
            Cluster::new(settings).map_err(|e| format!("cannot set up the etcd client: {e}"))?;
        cluster.start(&self.reports);
        self.cluster = Some(cluster);
        Ok(())
    }

    pub(super) fn on_cluster(&mut self, news: News) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match news {
            News::Granted {
                epoch,
                lease,
                sent_ns,
            } if epoch == cluster.epoch => {
                cluster.lease = Some(lease);
                cluster.extend(sent_ns);
                self.reachable();
            }
            News::Renewed {
                epoch,
                sent_ns,
                took,
            } if epoch == cluster.epoch => {
                cluster.renewals += 1;
                cluster.last_renewal = Some(took);
                if cluster.past_deadline() {
                    // Frozen past the deadline: the shims have fenced.
                    self.lose_lease("the lease was renewed only after its fencing deadline");
                    return;
                }
                cluster.extend(sent_ns);
                self.reachable();
                self.renew_orders();
            }
            News::LeaseGone { epoch } if epoch == cluster.epoch => {
                cluster.lease = None;
                self.lose_lease("the lease expired at etcd");
            }
            News::Unreachable { epoch, error } if epoch == cluster.epoch => {
                cluster.renewal_failures += 1;
                if cluster.no_quorum_since.is_none() {
                    cluster.no_quorum_since = Some(SystemTime::now());
                    self.display.event(&format!("cluster: no quorum: {error}"));
                }
            }
            News::Campaigned {
                service,
                lease,
                result,
            } => self.campaigned(&service, lease, result),
            News::MayBeFree { service } => {
                let election = cluster.election(&service);
                if election.stand == Stand::Held {
                    election.stand = Stand::Free;
                    election.watch = None;
                }
            }
            _ => {}
        }
    }

    fn reachable(&mut self) {
        if let Some(since) = self.cluster.as_mut().and_then(|c| c.no_quorum_since.take()) {
            let down = SystemTime::now().duration_since(since).unwrap_or_default();
            self.display.event(&format!(
                "cluster: etcd answers again (after {})",
                humantime::format_duration(Duration::from_millis(down.as_millis() as u64))
            ));
        }
    }

    /// Past the fencing deadline, or the lease gone: everything led is
    /// fenced (the shims act by themselves at the deadline; they are told
    /// again here), and a new lease is taken.
    fn lose_lease(&mut self, why: &str) {
        let led: Vec<String> = self
            .cluster
            .iter()
            .flat_map(|c| c.elections.iter())
            .filter(|(_, e)| matches!(e.stand, Stand::Leader { .. }))
            .map(|(s, _)| s.clone())
            .collect();
        for service in &led {
            let actives: Vec<ReplicaId> = self
                .replicas_of(service)
                .filter(|r| r.role() == Some(Role::Active))
                .map(|r| r.id.clone())
                .collect();
            let token = self.cluster.as_ref().and_then(|c| c.token(service));
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.election(service).stand = Stand::Free;
            }
            for id in actives {
                self.fence_now(&id, token);
            }
            let detail = format!("{service}: fenced ({why}; token {})", token.unwrap_or(0));
            self.emit_for_service("fenced", service, detail);
        }
        let messages = self.reports.clone();
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.start(&messages);
        }
    }

    /// Checked before every plan: the deadline may have passed while the
    /// loop waited for something else (or was stopped).
    pub(super) fn check_lease(&mut self) {
        let expired = self.cluster.as_ref().is_some_and(|c| {
            c.past_deadline()
                && c.elections
                    .values()
                    .any(|e| matches!(e.stand, Stand::Leader { .. }))
        });
        if expired {
            self.lose_lease("no keep-alive succeeded before the fencing deadline");
        }
    }

    /// Campaigns for `service`, unless under way or without a lease.
    pub(super) fn campaign(&mut self, service: &str) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(lease) = cluster.lease else { return };
        if cluster.standing(service) != Standing::MayCampaign {
            return;
        }
        cluster.election(service).stand = Stand::Campaigning;
        let (etcd, key, node) = (
            Arc::clone(&cluster.etcd),
            cluster.key(service),
            cluster.settings.node.clone(),
        );
        let pause = request_timeout(cluster.settings.lease);
        let messages = self.reports.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            let result = etcd
                .campaign(&key, &node, lease)
                .await
                .map_err(|e| e.to_string());
            if result.is_err() {
                // Not again at once: etcd is down or refusing.
                tokio::time::sleep(pause).await;
            }
            let news = News::Campaigned {
                service,
                lease,
                result,
            };
            let _ = messages.send(Message::Cluster(news));
        });
    }

    fn campaigned(&mut self, service: &str, lease: i64, result: Result<Campaign, String>) {
        let messages = self.reports.clone();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let node = cluster.settings.node.clone();
        let ttl = cluster.settings.lease;
        let key = cluster.key(service);
        let etcd = Arc::clone(&cluster.etcd);
        let current = cluster.lease == Some(lease);
        let election = cluster.election(service);
        if election.stand != Stand::Campaigning {
            return;
        }
        election.stand = Stand::Free;
        match result {
            // Won under a lease since abandoned: the key went with it.
            Ok(Campaign::Won { .. }) if !current => {}
            Ok(Campaign::Won { token }) => {
                election.stand = Stand::Leader {
                    token,
                    promoted: false,
                };
                election.leader = Some((node.clone(), token));
                let detail = format!("{service}: elected on {node} (token {token})");
                self.emit_for_service("elected", service, detail);
            }
            Ok(Campaign::Held {
                holder,
                token,
                revision,
            }) => {
                election.stand = Stand::Held;
                election.leader = Some((holder, token));
                let service = service.to_string();
                let task = tokio::spawn(async move {
                    // Not longer than half a lease: a watch on a member
                    // that stalled says nothing, and the campaign that
                    // follows asks again.
                    etcd.watch_for_delete(&key, revision, ttl / 2).await;
                    let _ = messages.send(Message::Cluster(News::MayBeFree { service }));
                });
                election.watch = Some(Task(task.abort_handle()));
            }
            Err(error) => {
                if cluster.no_quorum_since.is_none() {
                    cluster.no_quorum_since = Some(SystemTime::now());
                    self.display.event(&format!("cluster: no quorum: {error}"));
                }
            }
        }
    }

    /// Gives up `service`'s key at once (its active is gone or going),
    /// if this supervisor holds it.
    pub(super) fn resign(&mut self, service: &str, why: &str) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(token) = cluster.token(service) else {
            return;
        };
        cluster.election(service).stand = Stand::Free;
        let (etcd, key) = (Arc::clone(&cluster.etcd), cluster.key(service));
        // Until etcd answers: a key left behind would keep every other
        // node from campaigning while this one renews its lease.
        tokio::spawn(until_answered(move || {
            let (etcd, key) = (Arc::clone(&etcd), key.clone());
            async move { etcd.resign(&key, token).await }
        }));
        let detail = format!("{service}: resigned ({why}; token {token})");
        self.emit_for_service("resigned", service, detail);
    }

    /// The active of a cluster-scope service is being promoted: its shim
    /// gets the deadline first. Returns the token.
    pub(super) fn arm_fence(&mut self, id: &ReplicaId) -> Option<u64> {
        let cluster = self.cluster.as_mut()?;
        let token = cluster.token(&id.service)?;
        if let Some(Stand::Leader { promoted, .. }) =
            cluster.elections.get_mut(&id.service).map(|e| &mut e.stand)
        {
            *promoted = true;
        }
        let order = cluster.order(token);
        self.send_order(id, order);
        Some(token)
    }

    /// Tells the shim of a cluster-scope replica to demote it now.
    pub(super) fn fence_now(&mut self, id: &ReplicaId, token: Option<u64>) {
        if let Some(run) = self.replicas.get_mut(id).and_then(|r| r.run_mut()) {
            run.role = Some(Role::Standby);
        }
        // The shim ignores orders for a token it fenced already; an order
        // without a token (after a resume) takes the one it holds.
        let path = self.dir.fence_order(&id.to_string());
        let token = token.or_else(|| {
            crate::shim::protocol::read_record::<FenceOrder>(&path)
                .ok()
                .map(|o| o.token)
        });
        if let Some(token) = token {
            self.send_order(
                id,
                FenceOrder {
                    token,
                    deadline_ns: 0,
                },
            );
        }
    }

    /// Each renewal moves the deadline of every active this supervisor leads.
    fn renew_orders(&mut self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let orders: Vec<(ReplicaId, FenceOrder)> = self
            .replicas
            .values()
            .filter(|r| r.role() == Some(Role::Active))
            .filter_map(|r| Some((r.id.clone(), cluster.order(cluster.token(&r.id.service)?))))
            .collect();
        for (id, order) in orders {
            self.send_order(&id, order);
        }
    }

    fn send_order(&mut self, id: &ReplicaId, order: FenceOrder) {
        let path = self.dir.fence_order(&id.to_string());
        if let Err(e) = write_record(&order, &path) {
            // The shim keeps the deadline it has, and acts at it.
            self.display
                .event(&format!("cannot write {}: {e}", path.display()));
        }
        if let Some(shim) = self.replicas.get(id).and_then(|r| r.phase.shim()) {
            self.signal_shim(shim, FENCE_SIGNAL);
        }
    }

    /// The shim fenced its replica at its deadline before the loop saw it
    /// pass (a renewal raced the deadline).
    pub(super) fn shim_fenced(&mut self, id: &ReplicaId, token: u64) {
        if self.replicas.get(id).and_then(|r| r.role()) != Some(Role::Active) {
            return;
        }
        if let Some(run) = self.replicas.get_mut(id).and_then(|r| r.run_mut()) {
            run.role = Some(Role::Standby);
        }
        let detail = format!("{id} fenced by its shim at its deadline (token {token})");
        self.emit("fenced", Some(id), None, detail);
        if self.cluster.as_ref().and_then(|c| c.token(&id.service)) == Some(token) {
            self.resign(&id.service, "its active was fenced");
        }
    }

    /// Lets go of the lease as the supervisor exits: the keys it still
    /// holds go at once rather than at its end.
    pub(super) async fn leave_cluster(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        if let Some(lease) = cluster.lease {
            let _ = tokio::time::timeout(Duration::from_secs(1), cluster.etcd.revoke(lease)).await;
        }
    }
}
