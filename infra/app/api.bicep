// Flex Consumption plan + Python 3.11 Function App. Runs as the user-assigned identity for host storage, Key Vault
// references, Application Insights and (as a federated credential of the Entra app) Microsoft Graph.
// On Flex the runtime lives in functionAppConfig.runtime: FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION
// must NOT be app settings (docs/reference/azure.md §1.4).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Tag value azd uses to find the app for `azd deploy` (service name in azure.yaml).')
param serviceName string = 'api'

param planName string
param functionAppName string

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

param storageBlobEndpoint string
param storageQueueEndpoint string
param storageTableEndpoint string
param deploymentContainerName string

param applicationInsightsConnectionString string

@description('https://<vault>.vault.azure.net/ (trailing slash), used to build Key Vault references.')
param keyVaultUri string

@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent HTTP requests per instance (Python defaults to 1 on Flex; handlers are short, see docs/reference/azure.md §2).')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 4

@description('Always-ready instances for the HTTP group: 1 keeps Graph webhooks inside 3 s after idle periods (docs/performance.md, cold start); 0 = scale to zero.')
@minValue(0)
param alwaysReadyHttpInstances int = 1

@description('Public https base URL of the app used in Graph subscriptions; empty: the app uses WEBSITE_HOSTNAME, its default host name (which may be a unique name).')
param webhookBaseUrl string = ''

// ---- product settings (names and meaning: sync/config.py SETTINGS, docs/configuration.md) ----
param syncTablePrefix string
param graphTenantId string
param graphClientId string
param graphCredential string
param graphBaseUrl string
param syncFolderName string
param syncMailboxes string
param syncMailboxGroupId string
param sfLoginUrl string
param sfJwtAudience string
param sfAuthFlow string
param sfClientId string
param sfUsername string
param sfApiVersion string
param sfPubsubEndpoint string
param sfClientName string
param sfOutlookIdField string
param sfSoqlFilter string
param syncDirection string
param syncMailboxDirections string
param syncFieldMap string
param conflictPolicy string
param deletePolicySalesforce string
param deletePolicyM365 string
param breakerMinCount int
param breakerMaxShare string
param breakerMaxCount int
param reconcileSchedule string
param subscriptionSchedule string
param cdcPullSchedule string
param cdcPullHoldSeconds string

@description('Write EVENTS_HMAC_SECRET (Key Vault reference) for the signed POST /api/salesforce/events relay.')
param enableEventsRelay bool = false

// Key Vault secret names (the Salesforce key is a Key Vault certificate; its secret of the same name is the PEM)
param salesforceKeySecretName string
param eventsHmacSecretName string
param graphClientSecretName string
param graphCertificateSecretName string
param salesforceClientSecretName string


// app-settings:begin (tests/infra/test_infra.py reads the setting names between these markers)
var platformSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storageBlobEndpoint
  AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint
  AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  AZURE_CLIENT_ID: identityClientId
}

var productSettings = {
  SYNC_TABLE_PREFIX: syncTablePrefix
  GRAPH_TENANT_ID: graphTenantId
  GRAPH_CLIENT_ID: graphClientId
  GRAPH_CREDENTIAL: graphCredential
  GRAPH_MANAGED_IDENTITY_CLIENT_ID: identityClientId
  GRAPH_BASE_URL: graphBaseUrl
  GRAPH_MAILBOX_PERMITS: 'shared' // Graph's 4 requests per mailbox held across every instance (docs/performance.md)
  SYNC_FOLDER_NAME: syncFolderName
  SYNC_MAILBOXES: syncMailboxes
  SYNC_MAILBOX_GROUP_ID: syncMailboxGroupId
  WEBHOOK_BASE_URL: webhookBaseUrl // empty: the app uses the platform's WEBSITE_HOSTNAME (its real default host name)
  SF_LOGIN_URL: sfLoginUrl
  SF_JWT_AUDIENCE: sfJwtAudience
  SF_AUTH_FLOW: sfAuthFlow
  SF_CLIENT_ID: sfClientId
  SF_USERNAME: sfUsername
  SF_API_VERSION: sfApiVersion
  SF_PUBSUB_ENDPOINT: sfPubsubEndpoint
  SF_CLIENT_NAME: sfClientName
  SF_OUTLOOK_ID_FIELD: sfOutlookIdField
  SF_SOQL_FILTER: sfSoqlFilter
  // dev-only switches for the local emulators, pinned to their production values (sync/bootstrap.py)
  SF_CA_BUNDLE: ''
  SF_PUBSUB_INSECURE: 'false'
  SYNC_DIRECTION: syncDirection
  SYNC_MAILBOX_DIRECTIONS: syncMailboxDirections
  SYNC_FIELD_MAP: syncFieldMap
  CONFLICT_POLICY: conflictPolicy
  DELETE_POLICY_SALESFORCE: deletePolicySalesforce
  DELETE_POLICY_M365: deletePolicyM365
  BREAKER_MIN_COUNT: string(breakerMinCount)
  BREAKER_MAX_SHARE: breakerMaxShare
  BREAKER_MAX_COUNT: string(breakerMaxCount)
  RECONCILE_SCHEDULE: reconcileSchedule
  SUBSCRIPTION_SCHEDULE: subscriptionSchedule
  SUBSCRIPTIONS_ON_START: 'true'
  CDC_PULL_SCHEDULE: cdcPullSchedule
  CDC_PULL_HOLD_SECONDS: cdcPullHoldSeconds
}

// Secrets are Key Vault references, written only for the credential in use: an unresolved reference makes the app
// refuse to start its sync (sync/config.py load_policy), so no reference may point at a secret that is not needed.
var salesforceJwtSettings = sfAuthFlow == 'jwt_bearer' ? {
  SF_PRIVATE_KEY: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${salesforceKeySecretName}/)'
} : {}

var salesforceClientCredentialsSettings = sfAuthFlow == 'client_credentials' ? {
  SF_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${salesforceClientSecretName}/)'
} : {}

var graphSecretSettings = graphCredential == 'secret' ? {
  GRAPH_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${graphClientSecretName}/)'
} : {}

var graphCertificateSettings = graphCredential == 'certificate' ? {
  GRAPH_CERTIFICATE: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${graphCertificateSecretName}/)'
} : {}

var eventsRelaySettings = enableEventsRelay ? {
  EVENTS_HMAC_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${eventsHmacSecretName}/)'
} : {}
// app-settings:end

var appSettings = union(
  platformSettings,
  productSettings,
  salesforceJwtSettings,
  salesforceClientCredentialsSettings,
  graphSecretSettings,
  graphCertificateSettings,
  eventsRelaySettings
)

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex needs at least 2 always-ready instances; the sync tolerates a zone outage (queues retry, reconcile repairs)
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Graph change notifications and the Salesforce relay call the webhooks from the internet; they are protected by clientState / HMAC
  // checkov:skip=CKV_AZURE_17: Graph webhooks do not present client certificates; the endpoints check clientState / HMAC and ops endpoints need function keys
  // checkov:skip=CKV_AZURE_213: no health-check ping on a scale-to-zero Flex app (it would keep an instance busy); operators use /api/status
  // checkov:skip=CKV_AZURE_212: Flex scales from zero; a warm minimum is the alwaysReadyHttpInstances parameter (a cost choice), and queues retry after failover
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: alwaysReadyHttpInstances > 0 ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// Basic (user/password) publishing credentials off: deployments (azd / az functionapp deployment) use Entra tokens.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output functionAppName string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output webhookBaseUrl string = empty(webhookBaseUrl) ? 'https://${functionApp.properties.defaultHostName}' : webhookBaseUrl
