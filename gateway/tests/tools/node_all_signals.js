// An application on the OpenTelemetry Node SDK's defaults: NodeSDK with no code configuration,
// so traces, metrics and logs all go to OTLP as the standard OTEL_* variables say.
const M = process.env.NODE_OTEL_MODULES;
const { NodeSDK } = require(`${M}/@opentelemetry/sdk-node`);
const api = require(`${M}/@opentelemetry/api`);
const logsApi = require(`${M}/@opentelemetry/api-logs`);

const errors = [];
const sink = (...a) => errors.push(a.map(String).join(' '));
api.diag.setLogger(
  { error: sink, warn: sink, info() {}, debug() {}, verbose() {} },
  api.DiagLogLevel.WARN,
);

(async () => {
  const tag = process.argv[2];
  const sdk = new NodeSDK();
  sdk.start();
  const tracer = api.trace.getTracer('node-test');
  for (let i = 0; i < 3; i++) tracer.startSpan(`${tag}-span-${i}`).end();
  const logger = logsApi.logs.getLogger('node-test');
  for (let i = 0; i < 3; i++) logger.emit({ body: `${tag}-log-${i}`, severityNumber: 9 });
  api.metrics.getMeter('node-test').createCounter(`${tag}.requests`).add(3);
  await sdk.shutdown();
  if (errors.length) {
    console.error(`exporter errors:\n${errors.join('\n')}`);
    process.exit(1);
  }
  console.log('ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
