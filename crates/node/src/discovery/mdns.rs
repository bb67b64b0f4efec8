//! [`Discovery`] over multicast DNS, with the `mdns-sd` crate.

use std::net::{SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mdns_sd::{ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    Advertisement, Discovery, DiscoveryError, DiscoveryEvent, LogLimiter, RawService, EVENT_QUEUE,
    SERVICE_TYPE,
};

/// mDNS discovery: one `mdns-sd` daemon (a thread with its own sockets on
/// UDP 5353 of every interface, loopback included).
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    registered: Mutex<Option<String>>,
    stop: Arc<AtomicBool>,
}

fn err(e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Mdns(e.to_string())
}

impl MdnsDiscovery {
    /// Starts the mDNS daemon. Warns when no interface besides loopback
    /// can multicast (then only this host can see us).
    pub fn new() -> Result<MdnsDiscovery, DiscoveryError> {
        if let Some(false) = multicast_interface_present() {
            warn!("mDNS: no network interface besides loopback is up with multicast; only this host will see this node");
        }
        let daemon = ServiceDaemon::new().map_err(err)?;
        Ok(MdnsDiscovery {
            daemon,
            registered: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    fn unregister_current(&self) {
        let old = self
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(fullname) = old {
            match self.daemon.unregister(&fullname) {
                // The goodbye is sent before the status comes back.
                Ok(rx) => {
                    let _ = rx.recv_timeout(Duration::from_secs(1));
                }
                Err(e) => debug!(error = %e, "mDNS: unregister failed"),
            }
        }
    }
}

/// `Some(true)` when a non-loopback interface is up with multicast,
/// `Some(false)` when none is, `None` when unknown (not Linux).
fn multicast_interface_present() -> Option<bool> {
    let dir = std::fs::read_dir("/sys/class/net").ok()?;
    const IFF_UP: u32 = 0x1;
    const IFF_LOOPBACK: u32 = 0x8;
    const IFF_MULTICAST: u32 = 0x1000;
    for e in dir.flatten() {
        let flags = std::fs::read_to_string(e.path().join("flags")).unwrap_or_default();
        let Ok(f) = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16) else {
            continue;
        };
        if f & IFF_UP != 0 && f & IFF_LOOPBACK == 0 && f & IFF_MULTICAST != 0 {
            return Some(true);
        }
    }
    Some(false)
}

fn to_socket_addr(ip: &ScopedIp, port: u16) -> SocketAddr {
    match ip {
        ScopedIp::V6(v6) => {
            let scope = if v6.addr().segments()[0] & 0xffc0 == 0xfe80 {
                v6.scope_id().index
            } else {
                0
            };
            SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope))
        }
        other => SocketAddr::new(other.to_ip_addr(), port),
    }
}

impl Discovery for MdnsDiscovery {
    fn advertise(&self, ad: &Advertisement) -> Result<(), DiscoveryError> {
        self.unregister_current();
        let now = SystemTime::now();
        let label = ad.instance_label(now);
        let host = format!("{label}.local.");
        let txt = ad.txt(now);
        let props: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let info = ServiceInfo::new(SERVICE_TYPE, &label, &host, "", ad.port, &props[..])
            .map_err(err)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        self.daemon.register(info).map_err(err)?;
        *self.registered.lock().unwrap_or_else(|e| e.into_inner()) = Some(fullname);
        Ok(())
    }

    fn browse(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError> {
        let rx = self.daemon.browse(SERVICE_TYPE).map_err(err)?;
        let (tx, out) = mpsc::channel(EVENT_QUEUE);
        let stop = self.stop.clone();
        // A thread of its own drains the daemon's channel at once (the
        // daemon ends a subscription whose channel is full); whatever our
        // reader cannot take is dropped and counted.
        std::thread::Builder::new()
            .name("mmogit-mdns-browse".into())
            .spawn(move || {
                let mut log = LogLimiter::new(3, Duration::from_secs(60));
                while !stop.load(Ordering::Relaxed) {
                    let ev = match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(ev) => ev,
                        Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
                        Err(_) => break,
                    };
                    let out = match ev {
                        ServiceEvent::ServiceResolved(svc) => {
                            let port = svc.get_port();
                            let addrs = svc
                                .get_addresses()
                                .iter()
                                .take(64)
                                .map(|ip| to_socket_addr(ip, port))
                                .collect();
                            let txt = svc
                                .get_properties()
                                .iter()
                                .take(super::MAX_TXT_ENTRIES + 1)
                                .map(|p| (p.key().to_string(), p.val().map(|v| v.to_vec())))
                                .collect();
                            DiscoveryEvent::Found(RawService {
                                instance: svc.get_fullname().to_string(),
                                addrs,
                                txt,
                            })
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            DiscoveryEvent::Removed(fullname)
                        }
                        ServiceEvent::SearchStopped(_) => break,
                        _ => continue,
                    };
                    match tx.try_send(out) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if let Some(suppressed) = log.allow(std::time::Instant::now()) {
                                warn!(suppressed, "mDNS: too many records; dropping some");
                            }
                        }
                    }
                }
                debug!("mDNS: browse thread stopped");
            })
            .map_err(err)?;
        Ok(out)
    }

    fn shutdown(&self) {
        self.unregister_current();
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            self.shutdown();
        }
    }
}
