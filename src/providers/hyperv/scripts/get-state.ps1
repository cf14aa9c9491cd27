# The run state of one VM as Get-VM reports it (State, Status, OperationalStatus).
# Args (ArgsJson): { VmId: guid }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $out = Get-VmbVmState (Get-VmbVm $a)
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
