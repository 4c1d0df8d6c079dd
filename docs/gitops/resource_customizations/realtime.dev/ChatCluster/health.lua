-- Argo CD health check for realtime.dev/ChatCluster (kstatus-style conditions).
-- Argo CD runs it with gopher-lua (Lua 5.1 semantics) and passes the object as `obj`.
--   Healthy      Ready=True, and the status describes the current spec: status.observedGeneration
--                (and Ready's own observedGeneration, when set) equal metadata.generation
--   Degraded     Degraded=True or Stalled=True (a child could not be applied, or the rollout is stuck)
--   Suspended    Paused=True (spec.paused: the operator changes nothing)
--   Progressing  otherwise: no status yet, a stale status, pods starting, a rollout or a scale
-- Laid out as Argo CD's resource_customizations/<group>/<kind>/ (health_test.yaml, testdata/).
-- Install: docs/gitops/README.md (argocd-cm key resource.customizations.health.realtime.dev_ChatCluster).
local hs = {}

local function find_condition(conditions, wanted)
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local ready = find_condition(conditions, "Ready")
local progressing = find_condition(conditions, "Progressing")
local degraded = find_condition(conditions, "Degraded")
local stalled = find_condition(conditions, "Stalled")

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "ChatCluster is degraded")
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "ChatCluster is stalled")
  return hs
end

local paused = find_condition(conditions, "Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(paused, "ChatCluster is paused")
  return hs
end

if ready ~= nil and ready.status == "True" then
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Ready describes an older generation; waiting for the operator"
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(ready, "ChatCluster is ready")
  return hs
end

if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing, "ChatCluster is progressing")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the ChatCluster to become ready")
return hs
