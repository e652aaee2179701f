// An independent OPC UA client (node-opcua), as an MES would drive a line: browse it, watch
// jig j1's State during a run, open a work order, hold j1 and resume it, close the line's work
// order, and try a Hold as a read-only user. Prints one JSON object (times: ms since epoch).
// Usage: node client.js URL SECONDS LINE_WORK_ORDER USER PASSWORD VIEWER VIEWER_PASSWORD
"use strict";
const {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, TimestampsToReturn,
  ClientSubscription, ClientMonitoredItem, DataType, UserTokenType, makeBrowsePath,
} = require("node-opcua");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function connect(url, userName, password) {
  const client = OPCUAClient.create({
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 5, initialDelay: 200, maxDelay: 1000 },
  });
  await client.connect(url);
  const session = await client.createSession({ type: UserTokenType.UserName, userName, password });
  return { client, session };
}

async function main() {
  const [url, seconds, lineWo, user, password, viewer, viewerPassword] = process.argv.slice(2);
  const { client, session } = await connect(url, user, password);
  const ns = (await session.readNamespaceArray()).indexOf("urn:linehost");
  const find = async (path) => {
    const r = await session.translateBrowsePath(makeBrowsePath("RootFolder", path));
    if (!r.targets || r.targets.length === 0) throw new Error(`not found: ${path}`);
    return r.targets[0].targetId;
  };
  const names = async (nodeId) =>
    (await session.browse(nodeId)).references.map((r) => r.browseName.name).sort();
  const line = `/Objects/${ns}:Line`;
  const j1Path = `${line}/${ns}:Stations/${ns}:st1/${ns}:j1`;
  const stations = await names(await find(`${line}/${ns}:Stations`));
  const jigs = await names(await find(`${line}/${ns}:Stations/${ns}:st1`));
  const j1 = await find(j1Path);
  const holdNode = await find(`${j1Path}/${ns}:Hold`);
  const methods = await names(j1);
  const state = await find(`${j1Path}/${ns}:State`);

  const sub = ClientSubscription.create(session, {
    requestedPublishingInterval: 50, requestedMaxKeepAliveCount: 20, requestedLifetimeCount: 200,
    maxNotificationsPerPublish: 1000, publishingEnabled: true, priority: 10,
  });
  const states = [];  // [ms since epoch when seen, state]
  const item = ClientMonitoredItem.create(
    sub, { nodeId: state, attributeId: AttributeIds.Value },
    { samplingInterval: 0, discardOldest: false, queueSize: 1000 }, TimestampsToReturn.Both,
  );
  item.on("changed", (dv) => states.push([Date.now(), dv.value.value]));
  const seen = async (value, since, ms) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = states.find(([at, s]) => at >= since && s === value);
      if (hit) return hit[0];
      if (Date.now() > deadline) throw new Error(`j1 never showed ${value}: ${JSON.stringify(states)}`);
      await sleep(20);
    }
  };
  const call = async (objectId, methodId, inputArguments = []) => {
    const r = await session.call({ objectId, methodId, inputArguments });
    return { status: r.statusCode.name, output: (r.outputArguments || []).map((v) => v.value) };
  };
  await sleep(Number(seconds) * 1000);

  const wo = await find(`${line}/${ns}:WorkOrder`);
  const open = await find(`${line}/${ns}:WorkOrder/${ns}:Open`);
  const close = await find(`${line}/${ns}:WorkOrder/${ns}:Close`);
  const opened = await call(wo, open, [
    { dataType: DataType.String, value: "WO-NODE-1" },
    { dataType: DataType.UInt32, value: 7 },
  ]);
  const woId = await session.read({
    nodeId: await find(`${line}/${ns}:WorkOrder/${ns}:Id`), attributeId: AttributeIds.Value,
  });

  // Hold j1: the device in progress finishes, then nothing until Resume.
  const holdAt = Date.now();
  const hold = await call(j1, holdNode);
  const heldAt = await seen("held", holdAt, 20000);
  await sleep(3000);
  const stillHeld = states.filter(([at]) => at > heldAt).map(([, s]) => s);
  const resumeAt = Date.now();
  const resume = await call(j1, await find(`${j1Path}/${ns}:Resume`));
  const provisioningAgainAt = await seen("provisioning", resumeAt, 20000);

  // Close the line's work order: no device is provisioned against it any more.
  await sleep(500);
  const closeAt = Date.now();
  const closed = await call(wo, close, [{ dataType: DataType.String, value: lineWo }]);
  const completeAt = await seen("work_order_complete", closeAt, 20000);
  await sleep(2000);
  const closedAgain = await call(wo, close, [{ dataType: DataType.String, value: lineWo }]);
  await sub.terminate();
  await session.close();
  await client.disconnect();

  // A read-only user may look, not act: refused (and audited).
  const other = await connect(url, viewer, viewerPassword);
  const viewerState = (await other.session.read({ nodeId: state, attributeId: AttributeIds.Value }))
    .value.value;
  const r = await other.session.call({ objectId: j1, methodId: holdNode, inputArguments: [] });
  await other.session.close();
  await other.client.disconnect();

  console.log(JSON.stringify({
    stations, jigs, methods, states: states.map(([, s]) => s), timeline: states,
    call: opened, work_order_id: woId.value.value,
    hold, hold_at: holdAt, held_at: heldAt, still_held: stillHeld,
    resume, resume_at: resumeAt, provisioning_again_at: provisioningAgainAt,
    close: closed, close_at: closeAt, complete_at: completeAt, close_again: closedAgain,
    viewer_state: viewerState, viewer_hold: r.statusCode.name,
  }));
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
