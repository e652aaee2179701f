// An independent OPC UA client (node-opcua): browse the line, watch one jig's State during a
// run, open a work order. Prints one JSON object. Usage: node client.js URL SECONDS
"use strict";
const {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, TimestampsToReturn,
  ClientSubscription, ClientMonitoredItem, DataType, makeBrowsePath,
} = require("node-opcua");

async function main() {
  const [url, seconds] = process.argv.slice(2);
  const client = OPCUAClient.create({
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 5, initialDelay: 200, maxDelay: 1000 },
  });
  await client.connect(url);
  const session = await client.createSession();
  const ns = (await session.readNamespaceArray()).indexOf("urn:linehost");
  const find = async (path) => {
    const r = await session.translateBrowsePath(makeBrowsePath("RootFolder", path));
    if (!r.targets || r.targets.length === 0) throw new Error(`not found: ${path}`);
    return r.targets[0].targetId;
  };
  const names = async (nodeId) =>
    (await session.browse(nodeId)).references.map((r) => r.browseName.name).sort();
  const line = `/Objects/${ns}:Line`;
  const stations = await names(await find(`${line}/${ns}:Stations`));
  const jigs = await names(await find(`${line}/${ns}:Stations/${ns}:st1`));
  const state = await find(`${line}/${ns}:Stations/${ns}:st1/${ns}:j1/${ns}:State`);

  const sub = ClientSubscription.create(session, {
    requestedPublishingInterval: 50, requestedMaxKeepAliveCount: 20, requestedLifetimeCount: 200,
    maxNotificationsPerPublish: 1000, publishingEnabled: true, priority: 10,
  });
  const states = [];
  const item = ClientMonitoredItem.create(
    sub, { nodeId: state, attributeId: AttributeIds.Value },
    { samplingInterval: 0, discardOldest: false, queueSize: 1000 }, TimestampsToReturn.Both,
  );
  item.on("changed", (dv) => states.push(dv.value.value));
  await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000));

  const wo = await find(`${line}/${ns}:WorkOrder`);
  const open = await find(`${line}/${ns}:WorkOrder/${ns}:Open`);
  const call = await session.call({
    objectId: wo, methodId: open,
    inputArguments: [
      { dataType: DataType.String, value: "WO-NODE-1" },
      { dataType: DataType.UInt32, value: 7 },
    ],
  });
  const woId = await session.read({
    nodeId: await find(`${line}/${ns}:WorkOrder/${ns}:Id`), attributeId: AttributeIds.Value,
  });
  await sub.terminate();
  await session.close();
  await client.disconnect();
  console.log(JSON.stringify({
    stations, jigs, states,
    call: { status: call.statusCode.name, output: call.outputArguments.map((v) => v.value) },
    work_order_id: woId.value.value,
  }));
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
