//! A server around your own class in a few lines:
//! `cargo run --example greeter -- serve --workers 2`, then
//! `curl localhost:8787/greeter/ada`.

use odo::{App, Context, DurableObject, ObjectError, Request, Response};

/// Greets by name and counts the visits of each name.
struct Greeter;

impl DurableObject for Greeter {
    fn create(_: &Context) -> Self {
        Greeter
    }

    async fn fetch(&mut self, ctx: &mut Context, _: Request) -> Result<Response, ObjectError> {
        let visits: u64 = ctx.storage().get_typed("visits").await?.unwrap_or(0) + 1;
        ctx.storage().put_typed("visits", &visits).await?;
        let name = ctx.name().unwrap_or("?");
        Ok(Response::new(
            format!("hello {name} (visit {visits})").into(),
        ))
    }
}

fn main() -> std::process::ExitCode {
    App::new().class::<Greeter>("greeter", "GREETER").main()
}
