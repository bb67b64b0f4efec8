//! [`Discovery`] in memory, for tests: a shared "network" that carries
//! announcements between the nodes made from it, and lets a test inject
//! any raw record (malformed, hostile, floods).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::{
    Advertisement, Discovery, DiscoveryError, DiscoveryEvent, RawService, EVENT_QUEUE, SERVICE_TYPE,
};

#[derive(Default)]
struct Net {
    services: BTreeMap<String, RawService>,
    browsers: Vec<mpsc::Sender<DiscoveryEvent>>,
    dropped: u64,
}

/// A simulated LAN.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    net: Arc<Mutex<Net>>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node's discovery on this network, announcing `ip` as its address.
    pub fn node(&self, ip: IpAddr) -> MemoryDiscovery {
        MemoryDiscovery {
            network: self.clone(),
            ip,
            mine: Mutex::new(None),
            closed: Mutex::new(false),
        }
    }

    /// Delivers `ev` to every browser (and keeps `Found` services for later browsers).
    pub fn inject(&self, ev: DiscoveryEvent) {
        let mut net = self.net.lock().unwrap_or_else(|e| e.into_inner());
        match &ev {
            DiscoveryEvent::Found(s) => {
                net.services.insert(s.instance.clone(), s.clone());
            }
            DiscoveryEvent::Removed(name) => {
                net.services.remove(name);
            }
        }
        let mut dropped = 0;
        net.browsers.retain(|tx| match tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        net.dropped += dropped;
    }

    /// Events dropped because a browser's queue was full.
    pub fn dropped(&self) -> u64 {
        self.net.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

/// One node's view of a [`MemoryNetwork`].
pub struct MemoryDiscovery {
    network: MemoryNetwork,
    ip: IpAddr,
    mine: Mutex<Option<String>>,
    closed: Mutex<bool>,
}

impl Discovery for MemoryDiscovery {
    fn advertise(&self, ad: &Advertisement) -> Result<(), DiscoveryError> {
        if *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(DiscoveryError::Closed);
        }
        let now = SystemTime::now();
        let instance = format!("{}.{SERVICE_TYPE}", ad.instance_label(now));
        let old = self
            .mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(instance.clone());
        if let Some(old) = old.filter(|o| *o != instance) {
            self.network.inject(DiscoveryEvent::Removed(old));
        }
        self.network.inject(DiscoveryEvent::Found(RawService {
            instance,
            addrs: vec![SocketAddr::new(self.ip, ad.port)],
            txt: ad
                .txt(now)
                .into_iter()
                .map(|(k, v)| (k, Some(v.into_bytes())))
                .collect(),
        }));
        Ok(())
    }

    fn browse(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError> {
        if *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(DiscoveryError::Closed);
        }
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut net = self.network.net.lock().unwrap_or_else(|e| e.into_inner());
        for s in net.services.values() {
            let _ = tx.try_send(DiscoveryEvent::Found(s.clone()));
        }
        net.browsers.push(tx);
        Ok(rx)
    }

    fn shutdown(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        let mine = self.mine.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(name) = mine {
            self.network.inject(DiscoveryEvent::Removed(name));
        }
    }
}
