//! stdin → manifest URL (`stretcher::event::read_event`): a Consul event
//! list or one line. The first byte picks how the agent was invoked
//! (`CONSUL_INDEX`, `SERF_EVENT`, `SERF_USER_EVENT`); the rest is stdin.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stretcher::event::{read_event, Invocation};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, stdin)) = data.split_first() else {
        return;
    };
    let invocation = Invocation {
        consul: how & 1 != 0,
        serf_event: match (how >> 1) & 3 {
            1 => Some("user".to_string()),
            2 => Some("query".to_string()),
            _ => None,
        },
        serf_name: (how & 8 != 0).then(|| "deploy".to_string()),
        serf_ltime: (how & 16 != 0).then_some(u64::from(how)),
    };
    if let Ok(event) = runtime().block_on(read_event(stdin, &invocation)) {
        assert!(!event.url.is_empty(), "an empty URL was accepted");
        assert_eq!(event.url, event.url.trim(), "the URL was not trimmed");
    }
});
