// M365 <-> Salesforce contact sync: everything one customer deployment needs, in one resource group.
//   azd up                                   (azure.yaml, main.parameters.json)
//   az deployment group create -g <rg> -f infra/main.bicep -p graphClientId=... sfClientId=... sfUsername=...
// Raw resources only (no br/public: registry modules) so offline checks can see them (make infra-check).
targetScope = 'resourceGroup'

// ---------------------------------------------------------------- deployment
@minLength(1)
@maxLength(64)
@description('Environment name (azd: AZURE_ENV_NAME); part of the resource token and of the resource names.')
param environmentName string

@description('Azure region; must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Object id of the admin running the deployment (azd: AZURE_PRINCIPAL_ID). Gets Key Vault Secrets Officer and Certificates Officer so the scripts in infra/scripts can create the Salesforce key and the HMAC secret. Empty: no admin role.')
param adminPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param adminPrincipalType string = 'User'

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 4

@minValue(0)
param alwaysReadyHttpInstances int = 1

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@allowed([
  'containers'
  'account'
])
@description('Scope of Storage Blob Data Owner for the host besides the deployment container (see infra/app/rbac.bicep).')
param hostBlobRoleScope string = 'account'

@description('Public https base URL used in Graph subscriptions. Empty: the app uses its default host name (WEBSITE_HOSTNAME).')
param webhookBaseUrl string = ''

// ---------------------------------------------------------------- Microsoft Graph (Entra app)
@description('Entra tenant id of the mailboxes (GRAPH_TENANT_ID).')
param graphTenantId string = tenant().tenantId

@minLength(36)
@maxLength(36)
@description('Application (client) id of the Entra app registration (GRAPH_CLIENT_ID).')
param graphClientId string

@allowed([
  'managed_identity'
  'certificate'
  'secret'
])
@description('How the app authenticates as the Entra app (GRAPH_CREDENTIAL). managed_identity: the user-assigned identity is a federated credential of the app, no secret anywhere.')
param graphCredential string = 'managed_identity'

param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

param syncFolderName string = 'Salesforce_Sync'

@description('Comma-separated mailbox UPNs in scope (SYNC_MAILBOXES); with syncMailboxGroupId the scope is both.')
param syncMailboxes string = ''

@description('Object id of an Entra group whose transitive user members are mailboxes in scope (SYNC_MAILBOX_GROUP_ID); needs GroupMember.Read.All and User.ReadBasic.All (admin guide 2.1). Empty: syncMailboxes only.')
param syncMailboxGroupId string = ''

// ---------------------------------------------------------------- Salesforce
@description('Token host (SF_LOGIN_URL): the My Domain URL https://<name>.my.salesforce.com (required for client_credentials), or https://login.salesforce.com / https://test.salesforce.com (jwt_bearer only).')
param sfLoginUrl string = 'https://login.salesforce.com'

@description('JWT audience (SF_JWT_AUDIENCE): production (https://login.salesforce.com) or sandbox (https://test.salesforce.com); never the My Domain URL.')
param sfJwtAudience string = 'production'

@allowed([
  'jwt_bearer'
  'client_credentials'
])
param sfAuthFlow string = 'jwt_bearer'

@description('Consumer key of the connected app / external client app (SF_CLIENT_ID). Empty on the first deployment (the Key Vault that makes its certificate comes from it): set it and deploy again.')
param sfClientId string = ''

@description('Integration user username (SF_USERNAME); required with jwt_bearer.')
param sfUsername string = ''

param sfApiVersion string = '67.0'
param sfPubsubEndpoint string = 'api.pubsub.salesforce.com:7443'
param sfClientName string = 'm365-contact-sync'
param sfOutlookIdField string = ''
@description('Optional extra SOQL condition on Contact (SF_SOQL_FILTER), e.g. RecordType.Name = \'Customer\'; empty: every Contact owned by a synced rep syncs.')
param sfSoqlFilter string = ''

@description('Write EVENTS_HMAC_SECRET for the signed POST /api/salesforce/events relay (push instead of Pub/Sub pull).')
param enableEventsRelay bool = false

@secure()
@description('Optional value of the relay HMAC secret to store in Key Vault. Leave empty and use infra/scripts/Set-EventsHmacSecret.ps1.')
param eventsHmacSecret string = ''

// ---------------------------------------------------------------- policy
@allowed([
  'both'
  'to_salesforce'
  'to_m365'
])
param syncDirection string = 'both'

@description('JSON object mailbox -> direction (SYNC_MAILBOX_DIRECTIONS).')
param syncMailboxDirections string = '{}'

@description('JSON list of field rules (SYNC_FIELD_MAP); empty: standard fields.')
param syncFieldMap string = ''

@allowed([
  'salesforce_wins'
  'm365_wins'
  'newest_wins'
])
param conflictPolicy string = 'salesforce_wins'

@allowed([
  'propagate'
  'unlink'
  'recreate'
])
param deletePolicySalesforce string = 'propagate'

@allowed([
  'propagate'
  'unlink'
  'recreate'
])
param deletePolicyM365 string = 'unlink'

@minValue(1)
param breakerMinCount int = 10

@description('0 < share <= 1 (a string: Bicep has no decimal type).')
param breakerMaxShare string = '0.25'

@minValue(1)
param breakerMaxCount int = 200

param syncTablePrefix string = 'sync'

// ---------------------------------------------------------------- schedules (6-field NCRONTAB, UTC)
param reconcileSchedule string = '0 */30 * * * *'
param subscriptionSchedule string = '0 0 */6 * * *'
param cdcPullSchedule string = '0 * * * * *'

@description('Seconds one CDC pull holds the Pub/Sub subscription (CDC_PULL_HOLD_SECONDS): a little under the schedule period.')
param cdcPullHoldSeconds string = '57'

// ---------------------------------------------------------------- names
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'm365-salesforce-contact-sync'
}
var functionAppName = 'func-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}'
var keyVaultSecretNames = {
  salesforceKey: 'salesforce-jwt'
  eventsHmac: 'events-hmac-secret'
  graphClientSecret: 'graph-client-secret'
  graphCertificate: 'graph-certificate'
  salesforceClientSecret: 'salesforce-client-secret'
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: tags
    storageAccountName: 'st${resourceToken}'
    deploymentContainerName: deploymentContainerName
    skuName: storageSkuName
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    tags: tags
    keyVaultName: 'kv-${resourceToken}'
    eventsHmacSecretName: keyVaultSecretNames.eventsHmac
    eventsHmacSecret: eventsHmacSecret
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    identityPrincipalId: identity.properties.principalId
    storageAccountName: storage.outputs.storageAccountName
    deploymentContainerName: storage.outputs.deploymentContainerName
    hostContainerNames: storage.outputs.hostContainerNames
    keyVaultName: keyVault.outputs.keyVaultName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    adminPrincipalId: adminPrincipalId
    adminPrincipalType: adminPrincipalType
    hostBlobRoleScope: hostBlobRoleScope
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  dependsOn: [
    rbac
  ]
  params: {
    location: location
    tags: tags
    serviceName: 'api'
    planName: 'plan-${resourceToken}'
    functionAppName: functionAppName
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultUri: keyVault.outputs.keyVaultUri
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    webhookBaseUrl: webhookBaseUrl
    syncTablePrefix: syncTablePrefix
    graphTenantId: graphTenantId
    graphClientId: graphClientId
    graphCredential: graphCredential
    graphBaseUrl: graphBaseUrl
    syncFolderName: syncFolderName
    syncMailboxes: syncMailboxes
    syncMailboxGroupId: syncMailboxGroupId
    sfLoginUrl: sfLoginUrl
    sfJwtAudience: sfJwtAudience
    sfAuthFlow: sfAuthFlow
    sfClientId: sfClientId
    sfUsername: sfUsername
    sfApiVersion: sfApiVersion
    sfPubsubEndpoint: sfPubsubEndpoint
    sfClientName: sfClientName
    sfOutlookIdField: sfOutlookIdField
    sfSoqlFilter: sfSoqlFilter
    syncDirection: syncDirection
    syncMailboxDirections: syncMailboxDirections
    syncFieldMap: syncFieldMap
    conflictPolicy: conflictPolicy
    deletePolicySalesforce: deletePolicySalesforce
    deletePolicyM365: deletePolicyM365
    breakerMinCount: breakerMinCount
    breakerMaxShare: breakerMaxShare
    breakerMaxCount: breakerMaxCount
    reconcileSchedule: reconcileSchedule
    subscriptionSchedule: subscriptionSchedule
    cdcPullSchedule: cdcPullSchedule
    cdcPullHoldSeconds: cdcPullHoldSeconds
    enableEventsRelay: enableEventsRelay
    salesforceKeySecretName: keyVaultSecretNames.salesforceKey
    eventsHmacSecretName: keyVaultSecretNames.eventsHmac
    graphClientSecretName: keyVaultSecretNames.graphClientSecret
    graphCertificateSecretName: keyVaultSecretNames.graphCertificate
    salesforceClientSecretName: keyVaultSecretNames.salesforceClientSecret
  }
}

// ---------------------------------------------------------------- outputs (azd stores them in .azure/<env>/.env)
var hostUrl = 'https://${api.outputs.defaultHostName}'

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_APP_NAME string = api.outputs.functionAppName
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.keyVaultName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.storageAccountName
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
@description('Subject of the federated credential to add to the Entra app when graphCredential is managed_identity.')
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output SALESFORCE_KEY_CERTIFICATE_NAME string = keyVaultSecretNames.salesforceKey
output EVENTS_HMAC_SECRET_NAME string = keyVaultSecretNames.eventsHmac
output WEBHOOK_BASE_URL string = api.outputs.webhookBaseUrl
output GRAPH_NOTIFICATION_URL string = '${hostUrl}/api/graph/notifications'
output GRAPH_LIFECYCLE_URL string = '${hostUrl}/api/graph/lifecycle'
output SALESFORCE_EVENTS_URL string = '${hostUrl}/api/salesforce/events'
output STATUS_URL string = '${hostUrl}/api/status'
